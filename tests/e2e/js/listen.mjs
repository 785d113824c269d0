// Long-lived PubNub clients (pubnub@7.3.3) driven over stdin/stdout, for live presence tests.
//
//   node listen.mjs <origin host:port> <subscribe key>
//
// stdin, one JSON command a line, each with a numeric "id":
//   {"id": 1, "op": "client", "name": "alice", "config": {...extra PubNub config}}
//       a new client with a listener that reports everything it hears;
//   {"id": 2, "op": "call", "as": "alice", "call": "subscribe", "args": {...}}
//       any client method ("subscribe", "unsubscribe", "disconnect", "publish", "setState",
//       "channelGroups.addChannels", ...); without "args" it is called with no argument.
// stdout, one JSON line each:
//   {"reply": <id>, "result": <resolved value or null>} or {"reply": <id>, "error": {...}};
//   {"from": "alice", "kind": "presence" | "message" | "signal" | "status" | "file" | ..., "event": {...}}
//       for every listener callback, in the order the client makes them;
//   {"kind": "request", "method": "GET", "path": "/v2/subscribe/..."} for every HTTP request any
//       client sends, and {"kind": "response", "path": ..., "status": 200} when its answer starts;
//   {"crashed": {...}, "stack": "..."} if an exception escapes (the process then exits with 3).
// The process exits when stdin closes.

import http from 'node:http';
import readline from 'node:readline';

import PubNub from 'pubnub';

function emit(line) {
  process.stdout.write(`${JSON.stringify(line, plainErrors)}\n`);
}

// errorData may be a superagent Error: keep its message instead of serialising to {}.
function plainErrors(key, value) {
  if (value instanceof Error) {
    return { message: value.message, name: value.name };
  }
  return value === undefined ? null : value;
}

function describeError(error) {
  const status = error && typeof error === 'object' && 'status' in error ? error.status : undefined;
  return { name: error?.name ?? null, message: error?.message ?? String(error), status: status ?? null };
}

// 7.3.3 sends through superagent, which looks http.request up on the module for every request:
// wrapping it here shows every request of every client, as sent.
const originalRequest = http.request;
http.request = function loggedRequest(...args) {
  const request = originalRequest.apply(this, args);
  emit({ kind: 'request', method: request.method, path: request.path });
  request.on('response', (response) => emit({ kind: 'response', path: request.path, status: response.statusCode }));
  return request;
};

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

const [origin, subscribeKey] = process.argv.slice(2);
if (!origin || !subscribeKey) {
  process.stderr.write('usage: node listen.mjs <origin host:port> <subscribe key>\n');
  process.exit(64);
}

const clients = {};

function newClient(name, config) {
  const client = new PubNub({
    subscribeKey,
    publishKey: 'pub-e2e',
    origin,
    ssl: false,
    logVerbosity: false,
    ...config,
  });
  const report = (kind) => (event) => emit({ from: name, kind, event });
  client.addListener({
    status: report('status'),
    presence: report('presence'),
    message: report('message'),
    signal: report('signal'),
    file: report('file'),
    messageAction: report('messageAction'),
    objects: report('objects'),
  });
  clients[name] = client;
}

async function run(command) {
  if (command.op === 'client') {
    newClient(command.name, command.config ?? {});
    return null;
  }
  if (command.op === 'call') {
    const client = clients[command.as];
    if (client === undefined) throw new Error(`unknown client ${command.as}`);
    const method = resolveMethod(client, command.call);
    const value = 'args' in command ? await method(command.args) : await method();
    return value ?? null;
  }
  throw new Error(`unknown op ${command.op}`);
}

function crash(error) {
  emit({ crashed: describeError(error), stack: error?.stack ?? null });
  process.exit(3);
}

process.on('uncaughtException', crash);
process.on('unhandledRejection', crash);

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (text) => {
  if (!text.trim()) return;
  const command = JSON.parse(text);
  // Commands run concurrently: a reply is matched to its command by id, never by order.
  run(command).then(
    (result) => emit({ reply: command.id, result }),
    (error) => emit({ reply: command.id, error: describeError(error) }),
  );
});
lines.on('close', () => process.exit(0));
