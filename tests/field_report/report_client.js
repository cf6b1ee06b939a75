/*
 * The field report's browser client, run unchanged in Node against this server.
 *
 * `ClientHeartbeat` and `ReconnectManager` below are the report's own classes
 * (shared/seed/000_59e4dccda7e5ce87.txt, "完整心跳实现" and "指数退避重连"), copied
 * token for token; only the indentation, which the report lost, is restored. Their
 * heartbeat ({"type":"heartbeat","timestamp":Date.now()}), backoff
 * (baseDelay * 2^n capped at maxDelay, + Math.random() * 1000 jitter), 10 s connect
 * timeout, 5 s heartbeat check and options are the report's.
 *
 * The snippets are incomplete. What was filled in, with the minimum, and why - all of
 * it below the two classes, in startClient(), except (1):
 *   1. `WebSocket` is a browser global; Node 20 has none, so it is the `ws` package's
 *      (pinned in package.json). Its WebSocket has what the classes use: onopen/onerror,
 *      addEventListener('message'), send, readyState and the OPEN constant.
 *   2. `this.url` is read by handleDisconnect's retry but never set (connect(url) does
 *      not keep it): set to the URL before the first connect.
 *   3. `onConnect` is called after every successful connect but never defined. It
 *      starts a ClientHeartbeat on the new socket (the report never says who starts
 *      one), and on that socket's `close` stops it and calls handleDisconnect():
 *      nothing in the snippets reacts to a connection that closes after it opened
 *      (handleDisconnect runs only when a connect fails), so the client would never
 *      reconnect after a server restart - the one thing the report wants it to do.
 *   4. `onMaxRetriesReached` is never defined: it tells the caller (hooks.gaveUp).
 *   5. ClientHeartbeat's `onDisconnect` does nothing by default: it closes the socket
 *      (ws.close(), as a browser would), so (3) reconnects.
 *   6. `hooks.connected(ws)` lets the caller watch the socket (the driver prints its
 *      events); it is called first in onConnect and changes nothing.
 * Nothing else: no resume token, no reading of server_shutdown.reconnect_after_ms -
 * the report's client opens a new session on every reconnect, after its own backoff.
 */
'use strict';

const WebSocket = require('ws'); // (1)

// ------------------------------------------------------------ the report's classes
// 客户端心跳实现
class ClientHeartbeat {
  constructor(ws, options = {}) {
    this.ws = ws;
    this.interval = options.interval || 30000;
    this.timeout = options.timeout || 60000;
    this.onDisconnect = options.onDisconnect || (() => {});

    this.lastPong = Date.now();
  }

  start() {
    // 发送业务层心跳
    this.timer = setInterval(() => {
      if (this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({
          type: 'heartbeat',
          timestamp: Date.now()
        }));
      }
    }, this.interval);

    // 监听任何消息作为心跳响应
    this.ws.addEventListener('message', () => {
      this.lastPong = Date.now();
    });

    // 超时检测
    this.checkTimer = setInterval(() => {
      if (Date.now() - this.lastPong > this.timeout) {
        console.error('Heartbeat timeout, connection may be dead');
        this.onDisconnect();
      }
    }, 5000);
  }

  stop() {
    clearInterval(this.timer);
    clearInterval(this.checkTimer);
  }
}

class ReconnectManager {
  constructor(options = {}) {
    this.maxRetries = options.maxRetries || 10;
    this.baseDelay = options.baseDelay || 1000;
    this.maxDelay = options.maxDelay || 30000;
    this.retryCount = 0;
  }

  async connect(url) {
    try {
      this.ws = new WebSocket(url);
      await this.waitForConnection();
      this.retryCount = 0;
      this.onConnect();
    } catch (error) {
      this.handleDisconnect();
    }
  }

  handleDisconnect() {
    if (this.retryCount >= this.maxRetries) {
      this.onMaxRetriesReached();
      return;
    }

    // 指数退避计算
    const delay = Math.min(
      this.baseDelay * Math.pow(2, this.retryCount),
      this.maxDelay
    );

    // 添加随机抖动,避免惊群
    const jitter = Math.random() * 1000;
    const finalDelay = delay + jitter;

    console.log(`Reconnecting in ${finalDelay}ms (attempt ${this.retryCount + 1}/${this.maxRetries})`);

    setTimeout(() => {
      this.retryCount++;
      this.connect(this.url);
    }, finalDelay);
  }

  waitForConnection() {
    return new Promise((resolve, reject) => {
      const timeout = setTimeout(() => {
        reject(new Error('Connection timeout'));
      }, 10000);

      this.ws.onopen = () => {
        clearTimeout(timeout);
        resolve();
      };

      this.ws.onerror = (error) => {
        clearTimeout(timeout);
        reject(error);
      };
    });
  }
}

// ------------------------------------------------------------ the gaps, filled
/**
 * One report client on `url`. `options`: the report's ReconnectManager options
 * (maxRetries, baseDelay, maxDelay) plus `heartbeatInterval` / `heartbeatTimeout` for its
 * ClientHeartbeat (`interval` / `timeout` there). `hooks`: connected(ws), gaveUp().
 */
function startClient(url, options = {}, hooks = {}) {
  const manager = new ReconnectManager(options);
  manager.url = url; // (2)
  manager.onConnect = function () { // (3)
    const ws = this.ws;
    if (hooks.connected) hooks.connected(ws); // (6)
    const heartbeat = new ClientHeartbeat(ws, {
      interval: options.heartbeatInterval,
      timeout: options.heartbeatTimeout,
      onDisconnect: () => ws.close(), // (5)
    });
    heartbeat.start();
    ws.addEventListener('close', () => {
      heartbeat.stop();
      this.handleDisconnect();
    });
  };
  manager.onMaxRetriesReached = () => { // (4)
    if (hooks.gaveUp) hooks.gaveUp();
  };
  manager.connect(url);
  return manager;
}

module.exports = { ClientHeartbeat, ReconnectManager, startClient };
