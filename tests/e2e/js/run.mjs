// Runs a list of PubNub client calls (pubnub@7.3.3) against a server and prints one JSON line.
//
//   node run.mjs <origin host:port> '<scenario JSON>'
//
// scenario: {"subscribeKey": "...", "clients": {"alice": {"userId": "alice", ...extra config}},
//            "steps": [{"as": "alice", "call": "hereNow", "args": {...}, "expectError": false}, ...]}
//
// "call" is a method path on the client ("hereNow", "channelGroups.addChannels"). Without "args"
// the method is called with no argument at all: 7.3.3 takes the first argument of time() and
// channelGroups.listGroups() as the callback, so passing {} there would break the promise.
//
// Output: {"results": [<resolved value or {"error": {...}}>, ...]} on stdout, exit 0.
// A step that fails without "expectError": true ends the run: its error is printed to stdout as
// {"failedStep": i, "error": {...}} and the exit code is 1. A step that was expected to fail but
// succeeded does the same with exit code 2.

import PubNub from 'pubnub';

function describeError(error) {
  // PubNubError keeps the request outcome in .status: statusCode, category, errorData, operation.
  const status = error && typeof error === 'object' && 'status' in error ? error.status : undefined;
  return {
    name: error?.name ?? null,
    message: error?.message ?? String(error),
    status: status === undefined ? null : JSON.parse(JSON.stringify(status, plainErrors)),
  };
}

// errorData may be a superagent Error: keep its message instead of serialising to {}.
function plainErrors(key, value) {
  if (value instanceof Error) {
    return { message: value.message, name: value.name };
  }
  return value;
}

function resolveMethod(client, path) {
  let owner = client;
  const parts = path.split('.');
  for (const part of parts.slice(0, -1)) {
    owner = owner[part];
    if (owner === undefined) throw new Error(`no such client member: ${path}`);
  }
  const method = owner[parts[parts.length - 1]];
  if (typeof method !== 'function') throw new Error(`not a client method: ${path}`);
  return method.bind(owner);
}

async function main() {
  const [origin, scenarioText] = process.argv.slice(2);
  if (!origin || !scenarioText) {
    process.stderr.write('usage: node run.mjs <origin host:port> <scenario JSON>\n');
    process.exit(64);
  }
  const scenario = JSON.parse(scenarioText);
  const clients = {};
  for (const [name, extra] of Object.entries(scenario.clients)) {
    clients[name] = new PubNub({
      subscribeKey: scenario.subscribeKey,
      publishKey: scenario.publishKey ?? 'pub-e2e',
      origin,
      ssl: false,
      logVerbosity: false,
      ...extra,
    });
  }
  const results = [];
  for (const [index, step] of scenario.steps.entries()) {
    const client = clients[step.as];
    if (client === undefined) throw new Error(`step ${index}: unknown client ${step.as}`);
    const method = resolveMethod(client, step.call);
    try {
      const value = 'args' in step ? await method(step.args) : await method();
      if (step.expectError) {
        process.stdout.write(`${JSON.stringify({ failedStep: index, unexpectedSuccess: value ?? null })}\n`);
        process.exit(2);
      }
      results.push(value ?? null);
    } catch (error) {
      if (!step.expectError) {
        process.stdout.write(`${JSON.stringify({ failedStep: index, call: step.call, error: describeError(error) })}\n`);
        process.exit(1);
      }
      results.push({ error: describeError(error) });
    }
  }
  process.stdout.write(`${JSON.stringify({ results })}\n`);
  // Nothing is subscribed, but end promptly even if the client left a timer behind.
  process.exit(0);
}

// 7.3.3 parses responses inside the HTTP callback, so a body it cannot read throws there and
// never reaches the promise: report such a crash as JSON too.
function crash(error) {
  process.stdout.write(`${JSON.stringify({ crashed: describeError(error), stack: error?.stack ?? null })}\n`);
  process.exit(3);
}

process.on('uncaughtException', crash);
main().catch(crash);
