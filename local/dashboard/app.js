// QuantTrade live dashboard: plain JavaScript, no build step.
//
// Everything received is shown with textContent, never innerHTML: prices come
// from upstream services and room chat from other users, and neither may run
// as markup in this page.
"use strict";

(function () {
  // API Gateway closes a connection after 10 minutes without a client message.
  const params = new URLSearchParams(window.location.search);
  const PING_INTERVAL_MS = Math.max(1, Number(params.get("ping") || 240)) * 1000;
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 30000;
  const SEEN_PER_STREAM = 512; // recent seqs remembered per stream to drop replayed duplicates
  const FEED_LIMIT = 200;

  const $ = (id) => document.getElementById(id);

  const state = {
    status: "disconnected",
    wanted: false, // the user wants a connection: closes are followed by reconnects
    attempt: 0,
    reconnects: 0,
    sessionToken: null,
    lastSeq: {}, // stream -> highest seq seen, sent on resume
    seen: {}, // stream -> Set of recent seqs
    clientId: null,
    userId: null,
    symbols: [],
    room: null,
    memberIds: {}, // room -> our pseudonymous member id there (from our join_room answer)
    received: 0,
    duplicates: 0,
    resuming: false,
    requestCounter: 0,
    firstPrice: {},
  };
  let socket = null;
  let pingTimer = null;
  let retryTimer = null;
  // The page's state, readable from the console and by the browser test.
  window.quanttrade = state;

  function defaultUrl() {
    if (window.location.protocol === "http:" || window.location.protocol === "https:") {
      return (window.location.protocol === "https:" ? "wss://" : "ws://") + window.location.host + "/";
    }
    return "ws://127.0.0.1:8081/";
  }

  // ------------------------------------------------------------------ connection

  function setStatus(status, detail) {
    state.status = status;
    const box = $("status");
    box.className = "status status-" + status;
    $("status-text").textContent = detail ? status + " (" + detail + ")" : status;
    $("connect").disabled = status === "connected" || status === "connecting";
    $("disconnect").disabled = !state.wanted;
  }

  function start() {
    const token = $("token").value.trim();
    if (!token) {
      log("Enter a token first (python -m local token)");
      return;
    }
    state.wanted = true;
    state.attempt = 0;
    open();
  }

  function stop() {
    state.wanted = false;
    clearTimeout(retryTimer);
    if (socket) {
      socket.close(1000, "bye");
    }
    setStatus("disconnected");
  }

  function open() {
    clearTimeout(retryTimer);
    let url;
    try {
      url = new URL($("url").value.trim() || defaultUrl());
    } catch (error) {
      log("Bad WebSocket URL");
      state.wanted = false;
      setStatus("disconnected");
      return;
    }
    url.searchParams.set("token", $("token").value.trim());
    setStatus(state.attempt ? "reconnecting" : "connecting");
    const ws = new WebSocket(url.toString());
    socket = ws;
    ws.onopen = function () {
      if (socket !== ws) return;
      state.attempt = 0;
      setStatus("connected");
      if (state.sessionToken) {
        // Same session on a new connection: the server restores subscriptions and rooms
        // and replays what this page missed after the last seq of each stream.
        state.resuming = true;
        send({ action: "resume", session_token: state.sessionToken, last_seq: state.lastSeq });
      } else {
        send({ action: "hello" });
      }
      clearInterval(pingTimer);
      pingTimer = setInterval(function () {
        send({ action: "ping" });
      }, PING_INTERVAL_MS);
    };
    ws.onmessage = function (event) {
      if (socket === ws) onFrame(event.data);
    };
    ws.onclose = function (event) {
      if (socket !== ws) return;
      socket = null;
      clearInterval(pingTimer);
      log("Connection closed (" + event.code + (event.reason ? " " + event.reason : "") + ")");
      if (state.wanted) {
        scheduleReconnect();
      } else {
        setStatus("disconnected");
      }
    };
  }

  function scheduleReconnect() {
    // Exponential backoff with full jitter: a fleet of dashboards that lost the same
    // gateway must not come back in lockstep.
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * Math.pow(2, state.attempt));
    const delay = Math.max(100, Math.floor(Math.random() * ceiling));
    state.attempt += 1;
    state.reconnects += 1;
    $("reconnects").textContent = String(state.reconnects);
    setStatus("reconnecting", "in " + (delay / 1000).toFixed(1) + "s");
    retryTimer = setTimeout(open, delay);
  }

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    if (!frame.request_id) {
      state.requestCounter += 1;
      frame.request_id = "dash-" + state.requestCounter;
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  // ------------------------------------------------------------------ incoming

  function onFrame(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch (error) {
      log("Unreadable frame");
      return;
    }
    if (message && message.message_type === "batch" && message.payload && Array.isArray(message.payload.messages)) {
      message.payload.messages.forEach(onMessage);
    } else {
      onMessage(message);
    }
  }

  function isDuplicate(message) {
    if (typeof message.stream !== "string" || typeof message.seq !== "number") return false;
    let seen = state.seen[message.stream];
    if (!seen) {
      seen = state.seen[message.stream] = new Set();
    }
    if (seen.has(message.seq)) return true;
    seen.add(message.seq);
    if (seen.size > SEEN_PER_STREAM) {
      seen.delete(seen.values().next().value);
    }
    if (!(message.seq <= (state.lastSeq[message.stream] || 0))) {
      state.lastSeq[message.stream] = message.seq;
    }
    return false;
  }

  function onMessage(message) {
    if (!message || typeof message !== "object") return;
    if (isDuplicate(message)) {
      state.duplicates += 1;
      return;
    }
    state.received += 1;
    $("last-message").textContent = new Date().toLocaleTimeString();
    const payload = message.payload || {};
    switch (message.message_type) {
      case "connect":
        onHello(payload, false);
        break;
      case "resumed":
        state.resuming = false;
        onHello(payload, true);
        log("Resumed: " + (payload.recovered ? "nothing lost" : "some history was no longer available"));
        break;
      case "market_data":
        showPrice(message, payload);
        break;
      case "alert":
        showAlert(payload);
        break;
      case "room_message":
        // Members appear by their per-room pseudonym; ours is in our own join_room answer.
        showChat(message.room, payload.member_id === state.memberIds[message.room] ? "you" : payload.member_id, payload.message);
        break;
      case "join_room":
        if (payload.success) {
          state.memberIds[message.room] = payload.member_id;
        }
        if (!payload.success && payload.member_id) {
          showChat(message.room, null, payload.member_id + " joined");
        } else if (payload.success) {
          state.room = message.room || state.room;
          log("Joined room " + state.room);
        }
        break;
      case "leave_room":
        if (!payload.success && payload.member_id) {
          showChat(message.room, null, payload.member_id + " left");
        } else if (payload.success) {
          log("Left room " + message.room);
        }
        break;
      case "error":
        onError(payload);
        break;
      case "subscribe":
      case "unsubscribe":
        log(payload.message || message.message_type);
        break;
      case "pong":
        break;
      case undefined:
        // API Gateway's own answer when an integration fails: {"message": ..., "connectionId": ...}
        log("Gateway: " + String(message.message || "unexpected frame"));
        break;
      default:
        log(message.message_type + (message.stream ? " " + message.stream : ""));
    }
  }

  function onHello(payload, resumed) {
    if (payload.session_token) state.sessionToken = payload.session_token;
    state.clientId = payload.client_id || state.clientId;
    state.userId = payload.user_id || state.userId;
    $("client-id").textContent = state.clientId || "-";
    $("user-id").textContent = state.userId || "-";
    if (!resumed) {
      // A fresh session knows nothing about this page: ask again for what the page shows.
      if (state.symbols.length) subscribe(state.symbols);
      if (state.room) send({ action: "joinRoom", room: state.room });
      return;
    }
    // A resume restores what the server remembered of the session; ask for anything it did not.
    const restored = Array.isArray(payload.subscriptions) ? payload.subscriptions : [];
    const missing = state.symbols.filter(function (symbol) {
      return restored.indexOf("market_data:" + symbol) < 0;
    });
    if (missing.length) subscribe(missing);
    const rooms = Array.isArray(payload.rooms) ? payload.rooms : [];
    if (state.room && rooms.indexOf(state.room) < 0) send({ action: "joinRoom", room: state.room });
  }

  function onError(payload) {
    log("Error " + String(payload.error_code) + ": " + String(payload.message));
    if (state.resuming && payload.error_code === "AUTH_FAILED") {
      // The session expired or is unknown: start a new one and subscribe again.
      state.resuming = false;
      state.sessionToken = null;
      state.lastSeq = {};
      state.seen = {};
      send({ action: "hello" });
    }
  }

  // ------------------------------------------------------------------ prices

  function priceRow(symbol) {
    const body = $("prices").tBodies[0];
    let row = body.querySelector('tr[data-symbol="' + CSS.escape(symbol) + '"]');
    if (row) return row;
    row = document.createElement("tr");
    row.dataset.symbol = symbol;
    ["symbol", "price", "bid", "ask", "change", "seq", "time"].forEach(function (name) {
      const cell = document.createElement("td");
      cell.className = name;
      cell.textContent = name === "symbol" ? symbol : "-";
      row.appendChild(cell);
    });
    const after = Array.prototype.find.call(body.rows, function (other) {
      return other.dataset.symbol > symbol;
    });
    body.insertBefore(row, after || null);
    return row;
  }

  function fixed(value) {
    return typeof value === "number" && isFinite(value) ? value.toFixed(2) : "-";
  }

  function showPrice(message, payload) {
    const symbol = String(payload.symbol || "").toUpperCase();
    if (!symbol) return;
    const row = priceRow(symbol);
    const shownSeq = Number(row.dataset.seq || 0);
    // A replayed (older) tick must not overwrite a newer price.
    if (typeof message.seq === "number" && message.seq < shownSeq) return;
    row.dataset.seq = String(message.seq || shownSeq);
    if (!(symbol in state.firstPrice)) state.firstPrice[symbol] = payload.price;
    const change =
      typeof payload.change === "number" ? payload.change : Number(payload.price) - state.firstPrice[symbol];
    row.querySelector(".price").textContent = fixed(payload.price);
    row.querySelector(".bid").textContent = fixed(payload.bid);
    row.querySelector(".ask").textContent = fixed(payload.ask);
    const changeCell = row.querySelector(".change");
    changeCell.textContent = (change > 0 ? "+" : "") + fixed(change);
    changeCell.className = "change " + (change > 0 ? "up" : change < 0 ? "down" : "");
    row.querySelector(".seq").textContent = typeof message.seq === "number" ? String(message.seq) : "-";
    row.querySelector(".time").textContent = payload.timestamp ? new Date(payload.timestamp).toLocaleTimeString() : "-";
    row.classList.add("flash");
    setTimeout(function () {
      row.classList.remove("flash");
    }, 250);
  }

  function subscribe(symbols) {
    const streams = symbols.map(function (symbol) {
      return { stream_type: "market_data", symbol: symbol };
    });
    streams.push({ stream_type: "alerts" });
    symbols.forEach(priceRow);
    send({ action: "subscribe", streams: streams });
  }

  function parseSymbols(text) {
    return text
      .split(/[\s,]+/)
      .map(function (s) {
        return s.trim().toUpperCase();
      })
      .filter(function (s) {
        return /^[A-Z0-9._^=-]{1,24}$/.test(s);
      });
  }

  // ------------------------------------------------------------------ feeds

  function addItem(listId, parts, className) {
    const list = $(listId);
    const item = document.createElement("li");
    if (className) item.className = className;
    parts.forEach(function (part) {
      const span = document.createElement("span");
      if (part.cls) span.className = part.cls;
      span.textContent = part.text;
      item.appendChild(span);
    });
    list.insertBefore(item, list.firstChild);
    while (list.children.length > FEED_LIMIT) list.removeChild(list.lastChild);
    return item;
  }

  function showAlert(payload) {
    const severity = String(payload.severity || "low");
    addItem(
      "alerts",
      [
        { cls: "when", text: new Date().toLocaleTimeString() },
        { cls: "severity-" + severity.replace(/[^a-z]/g, ""), text: severity.toUpperCase() + " " },
        { text: String(payload.message || payload.alert_type || "") },
      ],
      "alert"
    );
  }

  function showChat(room, user, text) {
    addItem(
      "chat",
      [
        { cls: "when", text: new Date().toLocaleTimeString() },
        { cls: "who", text: user ? String(user) + ":" : "*" },
        { cls: "text", text: String(text) },
      ],
      user ? "chat-message" : "chat-notice"
    );
  }

  function log(text) {
    addItem("log", [{ cls: "when", text: new Date().toLocaleTimeString() }, { text: String(text) }]);
  }

  // ------------------------------------------------------------------ forms

  $("connect-form").addEventListener("submit", function (event) {
    event.preventDefault();
    start();
  });
  $("disconnect").addEventListener("click", stop);

  $("subscribe-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const wanted = parseSymbols($("symbols").value);
    const dropped = state.symbols.filter(function (s) {
      return wanted.indexOf(s) < 0;
    });
    if (dropped.length) {
      send({
        action: "unsubscribe",
        streams: dropped.map(function (symbol) {
          return { stream_type: "market_data", symbol: symbol };
        }),
      });
      dropped.forEach(function (symbol) {
        const row = $("prices").querySelector('tr[data-symbol="' + CSS.escape(symbol) + '"]');
        if (row) row.remove();
      });
    }
    state.symbols = wanted;
    if (wanted.length) subscribe(wanted);
  });

  $("room-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const room = $("room").value.trim();
    if (!room) return;
    if (state.room && state.room !== room) send({ action: "leaveRoom", room: state.room });
    state.room = room;
    send({ action: "joinRoom", room: room });
  });

  $("leave").addEventListener("click", function () {
    if (!state.room) return;
    send({ action: "leaveRoom", room: state.room });
    state.room = null;
  });

  $("chat-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const input = $("chat-input");
    const text = input.value;
    if (!text || !state.room) return;
    // Shown when the server echoes it back, so every member sees the same order.
    if (send({ action: "sendRoomMessage", room: state.room, message: text })) input.value = "";
  });

  // ------------------------------------------------------------------ start-up

  $("url").value = params.get("url") || defaultUrl();
  if (params.get("symbols")) $("symbols").value = params.get("symbols");
  if (params.get("room")) $("room").value = params.get("room");
  state.symbols = parseSymbols($("symbols").value);
  if (params.get("room")) state.room = params.get("room");
  setStatus("disconnected");
  if (params.get("token")) {
    $("token").value = params.get("token");
    // Keep the token out of the address bar (and so out of history and screenshots).
    params.delete("token");
    const rest = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (rest ? "?" + rest : ""));
    start();
  }
})();
