// Runs a JavaScript snippet, as a README shows it, against a server: `pubnub` is a pubnub@7.3.3 client
// and what the snippet logs is printed as JSON.
//
//   node snippet.mjs <origin host:port> <subscribe key> <user id> '<snippet source>'
//
// The snippet is the body of an async function, so it may `await` at its top level as the README's
// examples do. stdout, one JSON line each: {"log": [<console.log arguments>]} for every console.log
// call, then {"done": true} (exit 0); a snippet that throws prints {"error": {...}} instead (exit 1).

import PubNub from 'pubnub';

function emit(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function main() {
  const [origin, subscribeKey, userId, source] = process.argv.slice(2);
  if (!origin || !subscribeKey || !userId || source === undefined) {
    process.stderr.write('usage: node snippet.mjs <origin host:port> <subscribe key> <user id> <snippet>\n');
    process.exit(64);
  }
  const pubnub = new PubNub({ subscribeKey, publishKey: 'pub-e2e', origin, ssl: false, logVerbosity: false, userId });
  const console = { log: (...args) => emit({ log: args }) };
  const AsyncFunction = (async () => {}).constructor;
  try {
    await new AsyncFunction('pubnub', 'console', source)(pubnub, console);
  } catch (error) {
    const status = error && typeof error === 'object' && 'status' in error ? error.status : null;
    emit({ error: { name: error?.name ?? null, message: error?.message ?? String(error), status } });
    process.exit(1);
  }
  emit({ done: true });
  process.exit(0);
}

main();
