// WebSocket client for /ws: one frame in flight, adaptive rate, reconnect with backoff.
//
// Protocol (see server/live.py): binary messages are frames; the server numbers them
// 1, 2, 3... per connection and answers each frame it processes with
// {type: "result", frame_id, width, height, faces, server_ms, dropped}, or
// {type: "error", frame_id, error} when the frame could not be read. Text messages
// are JSON control messages ({type: "config", max_faces}) answered with an ack.
// Sending the next frame only when the previous answer arrived lets the frame rate
// follow whatever the network and server can sustain, with nothing queueing up.

import { socketProtocols } from './access.js';

const MIN_FRAME_INTERVAL_MS = 1000 / 30; // no point sending faster than the camera delivers
const ANSWER_TIMEOUT_MS = 10000;
const RECONNECT_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];

export function socketUrl(path = '/ws') {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

export class LiveClient {
  // capture: async () => ({blob, width, height}) | null
  // handlers: {onResult(result, rttMs), onStatus(text, kind), onError(message), onRefused(reason), onReconnected()}
  constructor(capture, handlers) {
    this.capture = capture;
    this.handlers = handlers;
    this.socket = null;
    this.active = false;
    this.config = {};
    this.reconnectAttempt = 0;
    this.reconnectTimer = null;
    this.sendTimer = null;
    // Track ids (and frame ids) restart with each connection: this number tells connections apart.
    this.connections = 0;
    this.resetFrameState();
  }

  resetFrameState() {
    this.sentCount = 0;
    this.inFlight = null; // {id, sentAt}
    this.lastSendAt = 0;
  }

  start(config = {}) {
    this.active = true;
    this.config = config;
    this.reconnectAttempt = 0;
    this.connect();
  }

  stop() {
    this.active = false;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.sendTimer);
    if (this.socket) {
      this.socket.onclose = null;
      this.socket.close(1000, 'client stopped');
      this.socket = null;
    }
  }

  // Sends a config update now if connected; it is also re-sent on every reconnect.
  configure(config) {
    this.config = { ...this.config, ...config };
    if (this.socket?.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify({ type: 'config', ...this.config }));
    }
  }

  connect() {
    this.resetFrameState();
    this.connections += 1;
    this.handlers.onStatus('Connecting to the server…', 'info');
    const socket = new WebSocket(socketUrl(), socketProtocols());
    this.socket = socket;
    socket.onopen = () => {
      this.reconnectAttempt = 0;
      if (this.connections > 1) this.handlers.onReconnected?.();
      this.handlers.onStatus('Connected. Analysing frames…', 'ok');
      if (Object.keys(this.config).length) socket.send(JSON.stringify({ type: 'config', ...this.config }));
      this.scheduleSend();
    };
    socket.onmessage = (event) => this.onMessage(event);
    socket.onerror = () => {
      // The close event that follows carries the details; nothing to add here.
    };
    socket.onclose = (event) => this.onClose(event);
  }

  onMessage(event) {
    if (typeof event.data !== 'string') return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    const answered = this.inFlight && message.frame_id === this.inFlight.id;
    const rtt = answered ? performance.now() - this.inFlight.sentAt : null;
    if (message.type === 'result' || (message.faces && message.frame_id !== undefined)) {
      this.handlers.onResult(message, rtt);
    } else if (message.error) {
      this.handlers.onError(message.error);
    }
    if (answered) {
      this.inFlight = null;
      this.scheduleSend();
    }
  }

  onClose(event) {
    this.socket = null;
    clearTimeout(this.sendTimer);
    if (!this.active) return;
    if (event.code === 1008) {
      // Refused by policy (API key or origin): retrying cannot help until the key changes.
      this.active = false;
      this.handlers.onRefused?.(event.reason || 'not allowed');
      return;
    }
    let reason;
    if (event.code === 1001 && this.reconnectAttempt === 0) {
      // The server is shutting down (a rolling update): reconnect at once, through the load balancer to another
      // replica; the jitter keeps all the streams of that server from arriving in the same instant.
      this.reconnectAttempt += 1;
      this.handlers.onStatus('The server is restarting; reconnecting…', 'info');
      this.reconnectTimer = setTimeout(() => this.active && this.connect(), Math.random() * 250);
      return;
    }
    if (event.code === 1013) {
      reason = `The server is busy (${event.reason || 'too many live connections'}).`;
    } else if (event.code === 1009) {
      reason = 'The server refused a frame as too large.';
    } else {
      reason = 'Disconnected from the server.';
    }
    const delay = RECONNECT_DELAYS_MS[Math.min(this.reconnectAttempt, RECONNECT_DELAYS_MS.length - 1)];
    this.reconnectAttempt += 1;
    this.handlers.onStatus(`${reason} Retrying in ${Math.round(delay / 1000)} s…`, 'error');
    this.reconnectTimer = setTimeout(() => this.active && this.connect(), delay);
  }

  scheduleSend() {
    clearTimeout(this.sendTimer);
    const wait = Math.max(0, this.lastSendAt + MIN_FRAME_INTERVAL_MS - performance.now());
    this.sendTimer = setTimeout(() => this.sendFrame(), wait);
  }

  async sendFrame() {
    const socket = this.socket;
    if (!this.active || !socket || socket.readyState !== WebSocket.OPEN) return;
    if (this.inFlight) {
      // An answer that never came (should not happen) must not stall the stream forever.
      if (performance.now() - this.inFlight.sentAt < ANSWER_TIMEOUT_MS) return;
      this.inFlight = null;
    }
    const frame = await this.capture();
    if (!frame) {
      this.sendTimer = setTimeout(() => this.sendFrame(), 100);
      return;
    }
    if (socket !== this.socket || socket.readyState !== WebSocket.OPEN) return;
    this.sentCount += 1;
    this.lastSendAt = performance.now();
    this.inFlight = { id: this.sentCount, sentAt: this.lastSendAt };
    socket.send(frame.blob);
    this.sendTimer = setTimeout(() => this.sendFrame(), ANSWER_TIMEOUT_MS);
  }
}
