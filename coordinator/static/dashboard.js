// The retrainer dashboard: reads GET /runs and GET /runs/{id} and renders them.
// Run data only ever reaches the page as text (textContent / text nodes), never as HTML.
"use strict";

(() => {
  const ROOT = document.body.dataset.root || "";
  const ACTIVE = new Set(["waiting", "queued", "running"]);
  const REFRESH_ACTIVE_MS = 1500;
  const REFRESH_IDLE_MS = 10000;
  const RETRY_MS = 5000;
  const PAGE_SIZE = 50;

  // Milliseconds to add to the browser's clock to get the coordinator's (from the Date header),
  // so that the elapsed time of a running stage is right on a machine whose clock is off.
  let clockOffsetMs = 0;

  // --- DOM helpers ----------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child)); // strings become text nodes
    }
    return node;
  }

  function replace(node, ...children) {
    node.replaceChildren();
    return append(node, children);
  }

  function badge(status) {
    return el("span", { class: `badge status-${status}` }, status);
  }

  // --- formatting -------------------------------------------------------------------------

  function now() {
    return Date.now() + clockOffsetMs;
  }

  function ms(iso) {
    return iso ? Date.parse(iso) : null;
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function formatTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return (
      `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
    );
  }

  function formatDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
    const s = Math.max(0, seconds);
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${pad(Math.floor(s % 60))}s`;
    return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
  }

  function formatAxis(seconds) {
    if (seconds === 0) return "0";
    if (seconds < 60) return `+${seconds}s`;
    if (seconds < 3600) {
      const rest = seconds % 60;
      return `+${Math.floor(seconds / 60)}m${rest ? `${pad(rest)}s` : ""}`;
    }
    const rest = Math.floor((seconds % 3600) / 60);
    return `+${Math.floor(seconds / 3600)}h${rest ? `${pad(rest)}m` : ""}`;
  }

  function formatParams(params) {
    const entries = Object.entries(params || {});
    if (!entries.length) return "—";
    return entries
      .map(([key, value]) => `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`)
      .join(", ");
  }

  function formatMetric(value) {
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3
      ? value.toExponential(3)
      : String(+value.toPrecision(4));
  }

  // Seconds a run has been active: its duration once finished, else up to now, less the time
  // it spent cancelled before a retry resumed it.
  function runSeconds(run) {
    const cancelled = run.cancelled_s || 0;
    if (run.duration_s !== null && run.duration_s !== undefined) return run.duration_s - cancelled;
    return (now() - ms(run.created_at)) / 1000 - cancelled;
  }

  function modelText(model) {
    if (!model || !model.version) return null;
    return `v${model.version}`;
  }

  // --- the API token ----------------------------------------------------------------------

  // A coordinator that authenticates its callers wants "Authorization: Bearer <token>" (its
  // static token, or an Entra ID access token). The token comes from "#token=..." in the
  // address (moved at once into this tab's sessionStorage and out of the address) or from the
  // form shown when the API answers 401; it is sent to this origin only.
  const TOKEN_KEY = "retrainer.apiToken";

  function takeTokenFromAddress() {
    const match = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    if (!match) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function tokenForm() {
    const input = el("input", {
      type: "password",
      placeholder: "API token",
      "aria-label": "API token",
      autocomplete: "off",
    });
    const form = el("form", { class: "token-form" }, input, el("button", { type: "submit" }, "Use token"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      window.location.reload();
    });
    return form;
  }

  takeTokenFromAddress();

  // --- fetching ---------------------------------------------------------------------------

  async function getJson(path) {
    return requestJson("GET", path);
  }

  // ``method`` ``path`` with the API token; the JSON body, or an Error with ``status``.
  async function requestJson(method, path) {
    const response = await fetch(ROOT + path, {
      method,
      headers: { Accept: "application/json", ...authHeaders() },
    });
    const date = Date.parse(response.headers.get("Date") || "");
    if (!Number.isNaN(date)) {
      // The header has whole seconds: only a clearly wrong local clock is corrected.
      const offset = date - Date.now();
      clockOffsetMs = Math.abs(offset) > 2000 ? offset : 0;
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      const error = new Error(
        `${method} ${path}: HTTP ${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`
      );
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // The banner shows an error once: the same error on the next polls leaves it as it is (no
  // flicker, a token being typed stays); a successful poll clears it.
  function showLoadError(error) {
    const banner = document.getElementById("load-error");
    if (!error) {
      banner.hidden = true;
      delete banner.dataset.message;
      return;
    }
    const message = error.message || String(error);
    if (!banner.hidden && banner.dataset.message === message) return;
    banner.dataset.message = message;
    replace(banner, message, error.status === 401 ? tokenForm() : null);
    banner.hidden = false;
  }

  // "Loading…" until the first answer (or error) comes.
  function doneLoading() {
    const loading = document.getElementById("loading");
    if (loading) loading.hidden = true;
    document.body.dataset.loaded = "true";
  }

  // What the dashboard needs besides the runs (the MLflow UI's address); asked once a page.
  let configPromise = null;
  function dashboardConfig() {
    if (!configPromise) {
      configPromise = getJson("/config/dashboard").catch(() => ({ mlflow_ui_url: null }));
    }
    return configPromise;
  }

  // The MLflow UI's page of a run or a model version; null when no MLflow UI is configured.
  function mlflowUrl(config, route) {
    const base = config && config.mlflow_ui_url;
    if (!base || !/^https?:\/\//i.test(base)) return null;
    return `${base}/#/${route}`;
  }

  function maybeLink(url, text, props) {
    return url
      ? el("a", { ...props, href: url, target: "_blank", rel: "noopener noreferrer" }, text)
      : el("span", props, text);
  }

  function setLive(text, active) {
    const live = document.getElementById("live");
    live.hidden = !text;
    live.classList.toggle("active", !!active);
    replace(live, text || "");
  }

  // Calls ``load`` now and again after the delay it returns; errors retry after RETRY_MS.
  function poll(load) {
    let timer = null;
    let latest = 0;
    async function tick() {
      clearTimeout(timer);
      const mine = ++latest;
      let delay = RETRY_MS;
      try {
        delay = await load(() => mine === latest);
        if (mine !== latest) return; // a newer tick (a filter change) took over
        showLoadError(null);
        doneLoading();
      } catch (error) {
        if (mine !== latest) return;
        showLoadError(error);
        doneLoading();
        // Nothing will come of asking again (and a retry would clear the token form).
        if (error.status === 404 || error.status === 401) return;
      }
      if (delay) timer = setTimeout(tick, delay);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
    return tick;
  }

  // --- the runs list ----------------------------------------------------------------------

  function runsPage() {
    const params = new URLSearchParams(window.location.search);
    const filter = document.getElementById("status-filter");
    const tbody = document.querySelector("#runs tbody");
    let offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    let total = 0;
    let shown = null; // the page last rendered
    filter.value = params.get("status") || "";

    // Each model's promotions as the coordinator recorded them (GET /models/{name}/promotions,
    // its own store: the registry is not asked), again on every refresh:
    // {champion: "3" | null, promoted: Set of versions ever promoted}.
    const champions = new Map();

    let asking = false;
    async function refreshChampions(runs) {
      if (asking) return;
      asking = true;
      try {
        await askChampions(runs);
      } finally {
        asking = false;
      }
    }

    async function askChampions(runs) {
      const names = new Set(runs.filter((run) => run.model && run.model.name).map((run) => run.model.name));
      let changed = false;
      await Promise.all(
        [...names].map(async (name) => {
          let history;
          try {
            history = await getJson(`/models/${encodeURIComponent(name)}/promotions`);
          } catch (_) {
            return; // not known this time: the marks stay as they were
          }
          const known = {
            champion: history.champion,
            promoted: new Set(history.promotions.map((p) => p.version)),
          };
          const before = champions.get(name);
          if (!before || before.champion !== known.champion || before.promoted.size !== known.promoted.size) {
            changed = true;
          }
          champions.set(name, known);
        })
      );
      if (changed && shown) render(shown);
    }

    // The model cell: the version, and whether it is the champion or was one (promoted by a
    // run or by an operator, since replaced); "promoted" when no history is known (the
    // coordinator recorded none for the model, e.g. promoted before it kept history).
    function modelCell(model) {
      const version = modelText(model);
      if (!version) return "—";
      const known = model.name ? champions.get(model.name) : undefined;
      const history = known && known.promoted.size ? known : undefined;
      let flag = null;
      if (history && history.champion === model.version) {
        flag = el("span", { class: "champion current", title: "the model's champion now" }, "★ champion");
      } else if (history && (history.promoted.has(model.version) || model.champion)) {
        flag = el(
          "span",
          { class: "champion was", title: `promoted, since replaced (champion now: v${history.champion})` },
          "was champion"
        );
      } else if (model.champion) {
        flag = el("span", { class: "champion", title: "this run's model was promoted to champion" }, "★ promoted");
      }
      return [el("span", { class: "version", title: model.name || "" }, version), flag ? " " : null, flag];
    }

    function syncUrl() {
      const query = new URLSearchParams();
      if (filter.value) query.set("status", filter.value);
      if (offset) query.set("offset", String(offset));
      const search = query.toString();
      window.history.replaceState(null, "", window.location.pathname + (search ? `?${search}` : ""));
    }

    function row(run) {
      const href = `${ROOT}/dashboard/runs/${encodeURIComponent(run.id)}`;
      const active = ACTIVE.has(run.status);
      const tr = el(
        "tr",
        { class: "run-row", dataset: { runId: run.id, status: run.status }, tabindex: "0" },
        el("td", { class: "status" }, badge(run.status)),
        el("td", { class: "id" }, el("a", { href, title: run.id }, run.id.slice(0, 8))),
        el(
          "td",
          { class: "recipe" },
          el("div", null, run.recipe),
          el("div", { class: "muted small", title: "data" }, run.data)
        ),
        el("td", { class: "trigger" }, run.trigger),
        el(
          "td",
          { class: "stage" },
          el("div", null, run.stage || "—"),
          run.error ? el("div", { class: "row-error small", title: run.error }, run.error) : null
        ),
        el("td", { class: "started", title: run.created_at }, formatTime(run.created_at)),
        el(
          "td",
          { class: `duration num${active ? " live-value" : ""}` },
          formatDuration(runSeconds(run))
        ),
        el("td", { class: "model" }, modelCell(run.model)),
        el("td", { class: "actions-cell" }, rowAction(run))
      );
      if (run.error) tr.title = run.error;
      tr.addEventListener("click", (event) => {
        if (event.target.closest("a, button")) return;
        window.location.href = href;
      });
      tr.addEventListener("keydown", (event) => {
        if (event.target.closest("button")) return;
        if (event.key === "Enter") window.location.href = href;
      });
      return tr;
    }

    // Cancel (an active run) or retry (a failed or cancelled one) from its row, with the API
    // token, as on the run's page; the outcome shows above the table. A row's button is the
    // same element from one refresh to the next (moved into the new row), so a click that
    // straddles a refresh still lands.
    const acting = new Set(); // runs with a request in flight: their button stays disabled
    let rowButtons = new Map();
    let nextRowButtons = new Map();
    function rowAction(run) {
      const action = ACTIVE.has(run.status)
        ? "cancel"
        : ["failed", "cancelled"].includes(run.status)
          ? "retry"
          : null;
      if (!action) return null;
      const key = `${run.id}/${action}`;
      let button = rowButtons.get(key);
      if (!button) {
        button = el(
          "button",
          { type: "button", class: `row-action${action === "cancel" ? " danger" : ""}`, dataset: { action } },
          action === "cancel" ? "Cancel" : "Retry"
        );
        button.addEventListener("click", () => rowAct(run, action));
      }
      button.disabled = acting.has(run.id);
      nextRowButtons.set(key, button);
      return button;
    }

    async function rowAct(run, action) {
      const short = run.id.slice(0, 8);
      if (action === "cancel" && !window.confirm(`Cancel run ${short}?`)) return;
      const result = document.getElementById("action-result");
      acting.add(run.id);
      if (shown) render(shown);
      result.className = "action-result muted";
      replace(result, `${action === "cancel" ? "Cancelling" : "Retrying"} run ${short}…`);
      result.hidden = false;
      try {
        const answer = await requestJson("POST", `/runs/${encodeURIComponent(run.id)}/${action}`);
        result.className = "action-result ok";
        replace(
          result,
          action === "cancel" ? `Run ${short} ${answer.status}.` : `Run ${short} retried: ${answer.status} again.`
        );
      } catch (error) {
        result.className = "action-result error";
        replace(result, error.message || String(error), error.status === 401 ? tokenForm() : null);
      } finally {
        acting.delete(run.id);
        refresh();
      }
    }

    async function load(isCurrent) {
      const query = new URLSearchParams({ limit: String(PAGE_SIZE), offset: String(offset) });
      if (filter.value) query.set("status", filter.value);
      const page = await getJson(`/runs?${query}`);
      if (!isCurrent()) return 0;
      total = page.total;
      shown = page;
      render(page);
      refreshChampions(page.runs);
      replace(
        document.getElementById("count"),
        `${total} run${total === 1 ? "" : "s"}${filter.value ? ` ${filter.value}` : ""}`
      );
      const last = Math.min(offset + page.runs.length, total);
      replace(document.getElementById("page"), total ? `${offset + 1}–${last} of ${total}` : "");
      document.getElementById("newer").disabled = offset === 0;
      document.getElementById("older").disabled = offset + PAGE_SIZE >= total;
      const anyActive = page.runs.some((run) => ACTIVE.has(run.status));
      setLive(anyActive ? "live" : "", anyActive);
      return anyActive ? REFRESH_ACTIVE_MS : REFRESH_IDLE_MS;
    }

    function render(page) {
      nextRowButtons = new Map();
      replace(tbody, page.runs.map(row));
      rowButtons = nextRowButtons; // the buttons of runs no longer shown are let go
      document.getElementById("empty").hidden = page.runs.length > 0;
    }

    const refresh = poll(load);
    filter.addEventListener("change", () => {
      offset = 0;
      syncUrl();
      refresh();
    });
    document.getElementById("newer").addEventListener("click", () => {
      offset = Math.max(0, offset - PAGE_SIZE);
      syncUrl();
      refresh();
    });
    document.getElementById("older").addEventListener("click", () => {
      offset += PAGE_SIZE;
      syncUrl();
      refresh();
    });
  }

  // --- one run ----------------------------------------------------------------------------

  // Every attempt of a stage, the finished ones from its history and the one in flight.
  function attemptsOf(stage) {
    const attempts = stage.attempts.map((a) => ({ ...a }));
    const inHistory = attempts.some((a) => a.attempt === stage.attempt);
    if (stage.attempt > 0 && !inHistory) {
      attempts.push({
        attempt: stage.attempt,
        outcome: stage.status,
        error: stage.error,
        queued_at: stage.queued_at,
        not_before: stage.not_before,
        started_at: stage.started_at,
        finished_at: stage.finished_at,
        duration_s: stage.duration_s,
        deliveries: stage.deliveries || null,
      });
    }
    return attempts;
  }

  function stageSeconds(stage, attempts) {
    if (stage.duration_s !== null && stage.duration_s !== undefined) return stage.duration_s;
    const current = attempts[attempts.length - 1];
    if (current && ACTIVE.has(current.outcome)) {
      const from = ms(current.started_at) || ms(current.queued_at);
      return from ? (now() - from) / 1000 : null;
    }
    return null;
  }

  function niceStep(spanS) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    return steps.find((step) => spanS / step <= 6) || 86400;
  }

  function renderTimeline(run) {
    const container = document.getElementById("timeline");
    const live = ACTIVE.has(run.status);
    const stages = run.stages.map((stage) => ({ stage, attempts: attemptsOf(stage) }));
    const start = ms(run.created_at);
    let end = live ? now() : ms(run.finished_at) || ms(run.updated_at);
    for (const { attempts } of stages) {
      for (const a of attempts) {
        // Worker clocks may run a little ahead of the coordinator's.
        end = Math.max(end, ms(a.finished_at) || 0, ms(a.started_at) || 0, ms(a.not_before) || 0);
      }
    }
    const span = Math.max(end - start, 1000);
    const x = (t) => `${Math.min(100, Math.max(0, ((t - start) / span) * 100)).toFixed(3)}%`;
    const width = (from, to) =>
      `${Math.min(100, Math.max(0, ((to - from) / span) * 100)).toFixed(3)}%`;
    const step = niceStep(span / 1000);
    const ticks = [];
    for (let s = 0; s * 1000 <= span; s += step) ticks.push(s);

    const grid = () =>
      ticks.map((s) => {
        const line = el("div", { class: "tl-grid" });
        line.style.left = x(start + s * 1000);
        return line;
      });

    const axisTrack = el("div", { class: "tl-track tl-axis" });
    for (const s of ticks) {
      const label = el("span", { class: "tl-tick" }, formatAxis(s));
      label.style.left = x(start + s * 1000);
      axisTrack.append(label);
    }
    const rows = [
      el("div", { class: "tl-row tl-head" }, el("div", { class: "tl-label muted" }, "stage"), axisTrack, el("div", { class: "tl-dur muted" }, "duration")),
    ];

    for (const { stage, attempts } of stages) {
      const track = el("div", { class: "tl-track" }, grid());
      for (const a of attempts) {
        const queued = ms(a.queued_at);
        const started = ms(a.started_at);
        const finished = ms(a.finished_at);
        const inFlight = ACTIVE.has(a.outcome);
        const barEnd = finished || (inFlight ? end : started || queued);
        if (queued !== null && (started === null || started > queued)) {
          const waitEnd = started !== null ? started : barEnd;
          const wait = el("div", { class: "tl-bar wait", title: `attempt ${a.attempt}: queued ${formatTime(a.queued_at)}` });
          wait.style.left = x(queued);
          wait.style.width = width(queued, waitEnd);
          track.append(wait);
        }
        if (started !== null) {
          const seconds = a.duration_s !== null && a.duration_s !== undefined ? a.duration_s : (barEnd - started) / 1000;
          const title = [
            `${stage.name} attempt ${a.attempt}: ${a.outcome}`,
            `started ${formatTime(a.started_at)}`,
            formatDuration(seconds),
            a.deliveries > 1 ? `delivered ${a.deliveries} times` : null,
            a.error ? a.error : null,
          ].filter(Boolean).join(" · ");
          // The duration is written on bars wide enough for it (and in every bar's tooltip).
          const wide = (barEnd - started) / span > 0.07;
          const bar = el(
            "div",
            { class: `tl-bar ${a.outcome}`, title, dataset: { attempt: String(a.attempt), outcome: a.outcome } },
            wide ? el("span", { class: "tl-bar-text" }, formatDuration(seconds)) : null
          );
          bar.style.left = x(started);
          bar.style.width = width(started, barEnd);
          track.append(bar);
        }
      }
      if (live) {
        const marker = el("div", { class: "tl-now", title: "now" });
        marker.style.left = x(now());
        track.append(marker);
      }
      const seconds = stageSeconds(stage, attempts);
      const sub = [];
      if (stage.attempt > 1) sub.push(`${stage.attempt} attempts`);
      if (stage.cached) sub.push("cached");
      // A command the bus delivered again: a worker died or stopped during the attempt.
      const redelivered = Math.max(0, ...attempts.map((a) => a.deliveries || 0));
      if (redelivered > 1) sub.push(`delivered ${redelivered}×`);
      if (stage.status === "queued" && stage.waiting) sub.push(stage.waiting);
      if (stage.status === "queued" && stage.not_before && ms(stage.not_before) > now()) {
        sub.push(`retry in ${formatDuration((ms(stage.not_before) - now()) / 1000)}`);
      }
      const label = el(
        "div",
        { class: "tl-label" },
        el("span", { class: `dot status-${stage.status}`, title: stage.status }),
        el("span", { class: "tl-name" }, stage.name),
        el("span", { class: "tl-status muted" }, stage.status),
        sub.length ? el("span", { class: "tl-sub" }, sub.join(" · ")) : null
      );
      const row = el(
        "div",
        { class: `tl-row status-${stage.status}`, dataset: { stage: stage.name, status: stage.status } },
        label,
        track,
        el("div", { class: `tl-dur num${ACTIVE.has(stage.status) ? " live-value" : ""}` }, formatDuration(seconds))
      );
      rows.push(row);
      // Why each attempt ended badly (an earlier attempt's error stays after a retry succeeds).
      const errors = attempts.filter((a) => a.error).map((a) => [a.attempt, a.outcome, a.error]);
      if (stage.error && !errors.some(([, , error]) => error === stage.error)) {
        errors.push([stage.attempt, stage.status, stage.error]);
      }
      for (const [attempt, outcome, error] of errors) {
        const prefix = attempts.length > 1 ? `attempt ${attempt} ${outcome.replace("_", " ")}: ` : "";
        rows.push(
          el(
            "div",
            { class: "tl-error", dataset: { stage: stage.name, attempt: String(attempt) } },
            prefix ? el("span", { class: "tl-error-attempt" }, prefix) : null,
            error
          ),
          ACTIVE.has(outcome) ? null : attemptLog(run.id, stage.name, attempt)
        );
      }
    }
    replace(container, rows);
  }

  // A finished attempt's log tail (GET .../attempts/{n}/log), collapsed; fetched when opened
  // and kept (a finished attempt's log does not change), open across the page's refreshes.
  const openLogs = new Set();
  const logs = new Map();

  function attemptLog(runId, stage, attempt) {
    const key = `${stage}/${attempt}`;
    const body = el("div", { class: "log-body" });
    const details = el(
      "details",
      { class: "attempt-log", dataset: { stage, attempt: String(attempt) }, open: openLogs.has(key) },
      el("summary", null, `log of ${stage} attempt ${attempt}`),
      body
    );
    function show() {
      const log = logs.get(key);
      if (!log) {
        replace(body, el("p", { class: "muted small" }, "Loading…"));
      } else if (log.failed) {
        replace(body, el("p", { class: "row-error small" }, log.failed));
      } else if (log.text) {
        replace(
          body,
          log.truncated ? el("p", { class: "muted small" }, "Only the end of the log is kept.") : null,
          el("pre", { class: "log" }, log.text)
        );
      } else {
        replace(body, el("p", { class: "muted small" }, "No log kept for this attempt."));
      }
    }
    async function fetchLog() {
      const path = `/runs/${encodeURIComponent(runId)}/stages/${encodeURIComponent(stage)}/attempts/${attempt}/log`;
      try {
        const answer = await getJson(path);
        logs.set(key, { text: answer.log, truncated: answer.truncated });
      } catch (error) {
        logs.set(key, { failed: error.message || String(error) });
      }
      show();
    }
    details.addEventListener("toggle", () => {
      if (!details.open) {
        openLogs.delete(key);
        return;
      }
      openLogs.add(key);
      show();
      const log = logs.get(key);
      if (!log || log.failed) fetchLog();
    });
    if (details.open) show();
    return details;
  }

  function renderHeader(run) {
    const header = document.getElementById("run-header");
    const params = formatParams(run.params);
    const details = run.trigger_details && Object.keys(run.trigger_details).length
      ? JSON.stringify(run.trigger_details)
      : null;
    const facts = [
      ["Run", run.id],
      ["Trigger", run.trigger],
      ["Data", run.data],
      ...(run.data_asset ? [["Data asset", `${run.data_asset.name} v${run.data_asset.version}`]] : []),
      ["Params", params],
      ["Started", formatTime(run.created_at)],
      ["Finished", formatTime(run.finished_at)],
      ["Duration", formatDuration(runSeconds(run))],
    ];
    replace(
      header,
      el("h1", null, el("span", { class: "recipe-name" }, run.recipe), " ", badge(run.status)),
      el(
        "dl",
        { class: "facts" },
        facts.map(([term, value]) =>
          el("div", { class: `fact fact-${term.toLowerCase().replace(/ /g, "-")}` }, el("dt", null, term), el("dd", { title: value }, value))
        ),
        details ? el("div", { class: "fact fact-wide" }, el("dt", null, "Trigger details"), el("dd", null, details)) : null
      )
    );
    document.title = `${run.recipe} ${run.status} · retrainer`;
  }

  function renderError(run) {
    const box = document.getElementById("run-error");
    box.hidden = !run.error;
    if (run.error) replace(box, el("strong", null, `Run ${run.status}: `), el("span", { class: "message" }, run.error));
  }

  function renderModel(run, config) {
    const body = document.querySelector("#model .body");
    const model = run.model;
    const train = run.stages.find((stage) => stage.name === "train");
    const mlflowRun = train && train.details ? train.details.mlflow_run_id : null;
    const runLine =
      typeof mlflowRun === "string" && mlflowRun
        ? el(
            "p",
            { class: "mlflow-run small" },
            "MLflow run ",
            maybeLink(mlflowUrl(config, `runs/${encodeURIComponent(mlflowRun)}`), mlflowRun, { class: "mono mlflow-run-id" })
          )
        : null;
    if (!model || !model.version) {
      replace(
        body,
        el("p", { class: "muted" }, ACTIVE.has(run.status) ? "Not registered yet." : "No model registered."),
        runLine
      );
      return;
    }
    let flag;
    if (model.champion === true) flag = el("span", { class: "champion-badge" }, "★ promoted to champion");
    else if (model.champion === false) flag = el("span", { class: "badge status-cancelled" }, "not promoted");
    else flag = el("span", { class: "badge status-queued" }, "promotion pending");
    const versionUrl = model.name
      ? mlflowUrl(config, `models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}`)
      : null;
    replace(
      body,
      el(
        "p",
        { class: "model-line" },
        el("span", { class: "model-name" }, model.name || "model"),
        " ",
        maybeLink(versionUrl, `v${model.version}`, { class: "model-version", title: versionUrl ? "open in MLflow" : null }),
        " ",
        flag
      ),
      model.reason ? el("p", { class: "muted model-reason" }, model.reason) : null,
      runLine
    );
  }

  function renderMetrics(run) {
    const body = document.querySelector("#metrics .body");
    const names = Object.keys(run.metrics || {}).sort();
    if (!names.length) {
      replace(body, el("p", { class: "muted" }, ACTIVE.has(run.status) ? "None yet." : "No metrics."));
      return;
    }
    replace(
      body,
      el(
        "table",
        { class: "metrics" },
        el(
          "tbody",
          null,
          names.map((name) =>
            el(
              "tr",
              { dataset: { metric: name } },
              el("th", null, name),
              el("td", { class: "num", title: String(run.metrics[name]) }, formatMetric(run.metrics[name]))
            )
          )
        )
      )
    );
  }

  // A plain link when the API needs no token (the API serves it with a sandboxing CSP);
  // with a token, the report is fetched with it and shown in a sandboxed frame (no scripts)
  // of a new tab, since a link cannot carry the Authorization header.
  function reportLink(report) {
    const link = el(
      "a",
      { class: "report", href: ROOT + report.url, target: "_blank", rel: "noopener" },
      report.name.replace(/_/g, " ")
    );
    link.addEventListener("click", async (event) => {
      const headers = authHeaders();
      if (!headers.Authorization) return;
      event.preventDefault();
      const tab = window.open("", "_blank");
      if (!tab) return;
      const response = await fetch(ROOT + report.url, { headers });
      const frame = tab.document.createElement("iframe");
      frame.setAttribute("sandbox", "");
      frame.style.cssText = "border:0;position:fixed;inset:0;width:100%;height:100%";
      frame.srcdoc = response.ok ? await response.text() : `HTTP ${response.status}`;
      tab.document.title = report.name;
      tab.document.body.append(frame);
    });
    return link;
  }

  function renderStageTable(run) {
    const tbody = document.querySelector("#stages tbody");
    replace(
      tbody,
      run.stages.map((stage) => {
        const outputs = Object.entries(stage.outputs || {});
        const reports = (run.reports || []).filter((report) => report.stage === stage.name);
        return el(
          "tr",
          { dataset: { stage: stage.name } },
          el("td", null, stage.name),
          el("td", null, badge(stage.status), stage.cached ? el("span", { class: "tag" }, "cached") : null),
          el(
            "td",
            { class: "num" },
            stage.attempt || "—",
            stage.deliveries > 1
              ? el("div", { class: "deliveries muted small", title: "bus deliveries of this attempt's command" }, `${stage.deliveries} deliveries`)
              : null
          ),
          el(
            "td",
            { class: "mono small" },
            el("div", null, stage.worker || "—"),
            // A deferred stage (an Azure ML job): the job the worker handed the work to.
            stage.details && stage.details.compute_job_id
              ? el(
                  "div",
                  { class: "compute-job muted", title: "training job" },
                  `${stage.details.compute_backend || "job"}: ${stage.details.compute_job_id}`
                )
              : null
          ),
          el("td", null, formatTime(stage.started_at)),
          el("td", { class: "num" }, formatDuration(stageSeconds(stage, attemptsOf(stage)))),
          el(
            "td",
            { class: "outputs mono small" },
            outputs.length ? outputs.map(([k, v]) => el("div", { title: v }, `${k}: ${v}`)) : "—",
            // Reports the stage wrote (e.g. the drift report), served by the API.
            reports.map((report) => el("div", null, reportLink(report)))
          )
        );
      })
    );
  }

  // Cancel and retry, with the API token; each shown only when the run's status allows it.
  function renderActions(run, refresh) {
    const cancel = document.getElementById("cancel-run");
    const retry = document.getElementById("retry-run");
    document.getElementById("actions").hidden = false;
    if (document.body.dataset.acting === "true") return; // buttons stay disabled meanwhile
    cancel.hidden = !ACTIVE.has(run.status);
    retry.hidden = !["failed", "cancelled"].includes(run.status);
    cancel.disabled = cancel.hidden;
    retry.disabled = retry.hidden;
    cancel.onclick = () => act(run, "cancel", refresh);
    retry.onclick = () => act(run, "retry", refresh);
  }

  async function act(run, action, refresh) {
    const result = document.getElementById("action-result");
    if (action === "cancel" && !window.confirm(`Cancel run ${run.id.slice(0, 8)}?`)) return;
    document.body.dataset.acting = "true";
    for (const id of ["cancel-run", "retry-run"]) document.getElementById(id).disabled = true;
    result.className = "action-result muted";
    replace(result, action === "cancel" ? "Cancelling…" : "Retrying…");
    result.hidden = false;
    try {
      const answer = await requestJson("POST", `/runs/${encodeURIComponent(run.id)}/${action}`);
      result.className = "action-result ok";
      replace(result, action === "cancel" ? `Run ${answer.status}.` : `Retried: the run is ${answer.status} again.`);
    } catch (error) {
      result.className = "action-result error";
      replace(result, error.message || String(error), error.status === 401 ? tokenForm() : null);
    } finally {
      delete document.body.dataset.acting;
      refresh();
    }
  }

  // The running stage's log as its worker writes it (every few seconds), asked again at each
  // refresh of an active run; kept scrolled to its end unless the reader scrolled up.
  const LIVE_LOG_MS = 3000;
  let liveLogAsked = { key: "", at: 0 };
  async function renderLiveLog(run) {
    const section = document.getElementById("live-log");
    const stage = run.stages.find((s) => s.status === "running" && s.attempt > 0);
    if (!stage) {
      section.hidden = true;
      return;
    }
    const key = `${stage.name}/${stage.attempt}`;
    replace(section.querySelector("h2"), `Log of ${stage.name} attempt ${stage.attempt} (live)`);
    section.dataset.stage = stage.name;
    section.hidden = false;
    if (liveLogAsked.key === key && now() - liveLogAsked.at < LIVE_LOG_MS) return;
    liveLogAsked = { key, at: now() };
    const body = section.querySelector(".log-body");
    let answer;
    try {
      answer = await getJson(
        `/runs/${encodeURIComponent(run.id)}/stages/${encodeURIComponent(stage.name)}/attempts/${stage.attempt}/log`
      );
    } catch (error) {
      replace(body, el("p", { class: "row-error small" }, error.message || String(error)));
      return;
    }
    const pre = body.querySelector("pre");
    const atEnd = !pre || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    if (!answer.log) {
      replace(body, el("p", { class: "muted small" }, "Nothing logged yet."));
      return;
    }
    if (pre && pre.textContent === answer.log) return;
    const shown = el("pre", { class: "log" }, answer.log);
    replace(body, answer.truncated ? el("p", { class: "muted small" }, "Only the end of the log is kept.") : null, shown);
    if (atEnd) shown.scrollTop = shown.scrollHeight;
  }

  function runPage() {
    const runId = document.body.dataset.runId;
    const refresh = poll(async () => {
      const [run, config] = await Promise.all([
        getJson(`/runs/${encodeURIComponent(runId)}`),
        dashboardConfig(),
      ]);
      renderHeader(run);
      renderActions(run, refresh);
      renderError(run);
      renderModel(run, config);
      renderMetrics(run);
      renderTimeline(run);
      renderStageTable(run);
      renderLiveLog(run);
      const active = ACTIVE.has(run.status);
      setLive(active ? "live" : "", active);
      document.body.dataset.runStatus = run.status;
      return active ? REFRESH_ACTIVE_MS : 0;
    });
  }

  // --- run groups ---------------------------------------------------------------------------

  function countsText(group) {
    const order = ["waiting", "queued", "running", "succeeded", "failed", "cancelled"];
    return order
      .filter((status) => group.counts[status])
      .map((status) => `${group.counts[status]} ${status}`)
      .join(" · ");
  }

  function groupsPage() {
    const tbody = document.querySelector("#groups tbody");
    poll(async (isCurrent) => {
      const page = await getJson(`/run-groups?limit=${PAGE_SIZE}`);
      if (!isCurrent()) return 0;
      replace(
        tbody,
        page.groups.map((group) => {
          const href = `${ROOT}/dashboard/groups/${encodeURIComponent(group.id)}`;
          return el(
            "tr",
            { class: "run-row", dataset: { groupId: group.id, status: group.status } },
            el("td", { class: "status" }, badge(group.status)),
            el("td", { class: "id" }, el("a", { href, title: group.id }, group.id.slice(0, 8))),
            el("td", { class: "recipe" }, group.recipe),
            el("td", { class: "members" }, `${group.members}: ${countsText(group)}`),
            el("td", { class: "started", title: group.created_at }, formatTime(group.created_at)),
            el("td", { class: "num" }, String(group.concurrency))
          );
        })
      );
      document.getElementById("empty").hidden = page.groups.length > 0;
      replace(document.getElementById("count"), `${page.total} group${page.total === 1 ? "" : "s"}`);
      const anyActive = page.groups.some((group) => group.status === "running");
      setLive(anyActive ? "live" : "", anyActive);
      return anyActive ? REFRESH_ACTIVE_MS : REFRESH_IDLE_MS;
    });
  }

  function groupPage() {
    const groupId = document.body.dataset.groupId;
    const statusFilter = document.getElementById("status-filter");
    const entityFilter = document.getElementById("entity-filter");
    const tbody = document.querySelector("#members tbody");
    const params = new URLSearchParams(window.location.search);
    statusFilter.value = params.get("status") || "";
    entityFilter.value = params.get("entity") || "";
    let latest = null;

    function memberRow(member) {
      const href = `${ROOT}/dashboard/runs/${encodeURIComponent(member.run_id)}`;
      const model = member.model;
      return el(
        "tr",
        { class: "run-row member-row", dataset: { entity: member.entity, status: member.status } },
        el("td", { class: "status" }, badge(member.status)),
        el("td", { class: "entity" }, member.entity),
        el("td", { class: "id" }, el("a", { href, title: member.run_id }, member.run_id.slice(0, 8))),
        el("td", { class: "stage" }, member.stage || "—"),
        el(
          "td",
          { class: "model" },
          model && model.version
            ? [
                el("span", { class: "version", title: model.name }, `${model.name} v${model.version}`),
                model.champion ? " " : null,
                model.champion ? el("span", { class: "champion" }, "★ promoted") : null,
              ]
            : "—"
        ),
        el("td", { class: "row-error small", title: member.error || "" }, member.error || "")
      );
    }

    function render() {
      if (!latest) return;
      const needle = entityFilter.value.trim().toLowerCase();
      const shown = latest.member_runs.filter(
        (member) =>
          (!statusFilter.value || member.status === statusFilter.value) &&
          (!needle || member.entity.toLowerCase().includes(needle))
      );
      replace(tbody, shown.map(memberRow));
      document.getElementById("empty").hidden = shown.length > 0;
      replace(document.getElementById("count"), `${shown.length} of ${latest.members} members`);
    }

    function syncUrl() {
      const query = new URLSearchParams();
      if (statusFilter.value) query.set("status", statusFilter.value);
      if (entityFilter.value.trim()) query.set("entity", entityFilter.value.trim());
      const search = query.toString();
      window.history.replaceState(null, "", window.location.pathname + (search ? `?${search}` : ""));
    }

    const cancel = document.getElementById("cancel-group");
    const retry = document.getElementById("retry-group");
    let acting = false;

    function renderActions(group) {
      document.getElementById("actions").hidden = false;
      if (acting) return;
      const stopped = (group.counts.failed || 0) + (group.counts.cancelled || 0);
      cancel.hidden = cancel.disabled = group.status !== "running";
      retry.hidden = retry.disabled = stopped === 0;
      replace(retry, `Retry ${stopped} failed/cancelled`);
    }

    async function act(action) {
      const result = document.getElementById("action-result");
      if (action === "cancel" && !window.confirm(`Cancel group ${groupId.slice(0, 8)} and its unfinished members?`)) return;
      acting = true;
      cancel.disabled = retry.disabled = true;
      result.className = "action-result muted";
      replace(result, action === "cancel" ? "Cancelling…" : "Retrying…");
      result.hidden = false;
      try {
        const path = `/run-groups/${encodeURIComponent(groupId)}/${action === "cancel" ? "cancel" : "retry-failed"}`;
        const answer = await requestJson("POST", path);
        result.className = "action-result ok";
        replace(result, action === "cancel" ? `Group ${answer.status}.` : `Retried: ${countsText(answer)}.`);
      } catch (error) {
        result.className = "action-result error";
        replace(result, error.message || String(error), error.status === 401 ? tokenForm() : null);
      } finally {
        acting = false;
        refresh();
      }
    }
    cancel.addEventListener("click", () => act("cancel"));
    retry.addEventListener("click", () => act("retry"));

    const refresh = poll(async () => {
      const group = await getJson(`/run-groups/${encodeURIComponent(groupId)}`);
      latest = group;
      renderActions(group);
      replace(
        document.getElementById("group-header"),
        el(
          "h1",
          null,
          badge(group.status),
          " ",
          `${group.recipe} group `,
          el("span", { class: "mono small", title: group.id }, group.id.slice(0, 8))
        ),
        el(
          "p",
          { class: "muted", id: "group-counts" },
          `${group.members} members, ${group.concurrency} at a time: ${countsText(group)}`
        )
      );
      render();
      document.body.dataset.groupStatus = group.status;
      const active = group.status === "running";
      setLive(active ? "live" : "", active);
      return active ? REFRESH_ACTIVE_MS : REFRESH_IDLE_MS;
    });
    statusFilter.addEventListener("change", () => {
      syncUrl();
      render();
    });
    entityFilter.addEventListener("input", () => {
      syncUrl();
      render();
    });
  }

  // --- schedules ----------------------------------------------------------------------------

  function schedulesPage() {
    const tbody = document.querySelector("#schedules tbody");
    poll(async (isCurrent) => {
      const page = await getJson("/schedules");
      if (!isCurrent()) return 0;
      replace(
        tbody,
        page.schedules.map((schedule) => {
          const starts = `${schedule.group ? "a group of " : ""}${schedule.recipe} on ${schedule.data}`;
          return el(
            "tr",
            { class: "schedule-row" },
            el("td", { class: "cron", title: schedule.name }, schedule.cron),
            el("td", { class: "timezone" }, schedule.timezone),
            el("td", { class: "starts" }, starts),
            el("td", { class: "next", title: schedule.next_tick }, formatTime(schedule.next_tick)),
            el("td", { class: "last", title: schedule.last_tick || "" }, formatTime(schedule.last_tick))
          );
        })
      );
      document.getElementById("empty").hidden = page.schedules.length > 0;
      const total = page.schedules.length;
      replace(document.getElementById("count"), `${total} schedule${total === 1 ? "" : "s"}`);
      return REFRESH_IDLE_MS;
    });
  }

  const pages = {
    runs: runsPage,
    run: runPage,
    groups: groupsPage,
    group: groupPage,
    schedules: schedulesPage,
  };
  const page = pages[document.body.dataset.page];
  if (page) page();
})();
