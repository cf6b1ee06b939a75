/*
 * Runs N of the field report's clients (report_client.js) against one URL and prints one
 * JSON line per event on stdout, for tests/field_report/test_report_client.py:
 *
 *   {"event":"connected","client":i,"n":k,"t":ms}   the k-th time onConnect ran
 *   {"event":"message","client":i,"type":T,"message":{...},"t":ms}
 *   {"event":"sent","client":i,"type":"heartbeat","message":{...},"t":ms}
 *   {"event":"close","client":i,"code":C,"reason":R,"opened":B,"t":ms}  opened: false
 *                                                  for a connect that failed
 *   {"event":"reconnect_scheduled","client":i,"delay_ms":D,"attempt":A,"of":M,"t":ms}
 *   {"event":"gave_up","client":i,"t":ms}
 *
 * `reconnect_scheduled` is the report's own console.log line ("Reconnecting in ...ms
 * (attempt a/m)"), parsed; any other console.log goes to stderr. `t` is Date.now().
 *
 * node driver.js --url ws://127.0.0.1:PORT/ [--clients N] [--heartbeat-interval MS]
 *   [--heartbeat-timeout MS] [--base-delay MS] [--max-retries N]
 *   [--heartbeat-field timestamp|ts]
 *
 * --heartbeat-field ts renames the report's `timestamp` to `ts` on the way out: only for
 * measuring servers older than the `timestamp` alias, which close the report's heartbeat
 * with 1007. The default sends the report's bytes unchanged.
 */
'use strict';

const { parseArgs } = require('node:util');

// Every socket the report's client creates is watched from its construction, so the first
// message (the welcome, which can arrive with the 101 and be dispatched before the
// client's onConnect has run) is reported too. A subclass: it adds listeners, nothing else.
const RealWebSocket = require('ws');
let constructing = null; // the client whose connect() is creating a socket right now
class WatchedWebSocket extends RealWebSocket {
  constructor(...rest) {
    super(...rest);
    watch(constructing, this);
  }
}
require.cache[require.resolve('ws')].exports = WatchedWebSocket;
const { ReconnectManager, startClient } = require('./report_client.js');

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    clients: { type: 'string', default: '1' },
    'heartbeat-interval': { type: 'string' },
    'heartbeat-timeout': { type: 'string' },
    'base-delay': { type: 'string' },
    'max-retries': { type: 'string' },
    'heartbeat-field': { type: 'string', default: 'timestamp' },
  },
});
if (!args.url) {
  console.error('--url is required');
  process.exit(2);
}
const number = (name) => (args[name] === undefined ? undefined : Number(args[name]));

function emit(event, fields) {
  process.stdout.write(JSON.stringify({ event, ...fields, t: Date.now() }) + '\n');
}

// The report's handleDisconnect logs its schedule with console.log: know which client spoke.
const clientOf = new Map();
let speaking = null;
const handleDisconnect = ReconnectManager.prototype.handleDisconnect;
ReconnectManager.prototype.handleDisconnect = function () {
  speaking = clientOf.has(this) ? clientOf.get(this) : null;
  try {
    return handleDisconnect.call(this);
  } finally {
    speaking = null;
  }
};
const connect = ReconnectManager.prototype.connect;
ReconnectManager.prototype.connect = function (url) {
  constructing = clientOf.has(this) ? clientOf.get(this) : starting;
  try {
    return connect.call(this, url); // creates its socket before its first await
  } finally {
    constructing = null;
  }
};
const SCHEDULE = /^Reconnecting in ([0-9.]+)ms \(attempt (\d+)\/(\d+)\)$/;
console.log = (...parts) => {
  const text = parts.join(' ');
  const match = SCHEDULE.exec(text);
  if (match) {
    emit('reconnect_scheduled', {
      client: speaking,
      delay_ms: Number(match[1]),
      attempt: Number(match[2]),
      of: Number(match[3]),
    });
  } else {
    process.stderr.write(text + '\n');
  }
};

function watch(client, ws) {
  let opened = false;
  const send = ws.send.bind(ws);
  ws.send = (data, ...rest) => {
    let message = null;
    try {
      message = JSON.parse(data);
    } catch (error) {
      // not JSON: sent as is, not reported
    }
    if (message && message.type === 'heartbeat') {
      if (args['heartbeat-field'] === 'ts' && 'timestamp' in message) {
        message.ts = message.timestamp;
        delete message.timestamp;
        data = JSON.stringify(message);
      }
      emit('sent', { client, type: message.type, message });
    }
    return send(data, ...rest);
  };
  ws.addEventListener('open', () => {
    opened = true;
  });
  ws.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (error) {
      emit('message', { client, type: null, raw: String(event.data).slice(0, 200) });
      return;
    }
    emit('message', { client, type: message.type, message });
  });
  ws.addEventListener('close', (event) => {
    emit('close', { client, code: event.code, reason: event.reason, opened });
  });
}

const clients = Number(args.clients);
let starting = null;
for (let i = 0; i < clients; i++) {
  let connects = 0;
  starting = i;
  const manager = startClient(
    args.url,
    {
      maxRetries: number('max-retries'),
      baseDelay: number('base-delay'),
      heartbeatInterval: number('heartbeat-interval'),
      heartbeatTimeout: number('heartbeat-timeout'),
    },
    {
      connected: () => emit('connected', { client: i, n: ++connects }),
      gaveUp: () => emit('gave_up', { client: i }),
    },
  );
  clientOf.set(manager, i);
}
starting = null;
process.on('SIGTERM', () => process.exit(0));
process.stdout.on('error', () => process.exit(0)); // the reader went away
