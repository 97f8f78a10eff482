// Document QA page: upload files, ask questions, read the NDJSON answer stream as it arrives.
// Everything user-supplied is put into the page with textContent, never innerHTML.
"use strict";

const $ = (id) => document.getElementById(id);
let info = null;

function formatBytes(n) {
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(1)} KB`;
  return `${n} bytes`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function errorOf(response) {
  try {
    const body = await response.json();
    return body.error || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status} ${response.statusText}`;
  }
}

async function loadInfo() {
  const r = await fetch("/api/info");
  info = await r.json();
  $("info").textContent = `compressor ${info.compressor} (${info.version}) · decoder ${info.decoder} · ` +
    `top ${info.top_k} passages · answers up to ${info.max_new_tokens} tokens`;
  $("untrained").hidden = info.trained;
  $("upload-limit").textContent = `.txt .md .pdf .html, up to ${formatBytes(info.max_upload_bytes)}`;
}

async function loadDocuments() {
  const r = await fetch("/api/documents");
  const { documents } = await r.json();
  const list = $("documents");
  list.replaceChildren(...documents.map((d) => {
    const li = el("li", "document");
    li.append(el("span", "name", d.name),
      el("span", "muted", ` · ${d.kind} · ${formatBytes(d.bytes)} · ${d.chunks} passages · ${d.uploaded_at}`));
    return li;
  }));
  $("no-documents").hidden = documents.length > 0;
}

function setUploadStatus(text, isError) {
  const status = $("upload-status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function upload(event) {
  event.preventDefault();
  const file = $("file").files[0];
  if (!file) return setUploadStatus("Choose a file first.", true);
  if (info && file.size > info.max_upload_bytes) {
    return setUploadStatus(`${file.name} is ${formatBytes(file.size)}: the limit is ${formatBytes(info.max_upload_bytes)}.`, true);
  }
  $("upload").disabled = true;
  setUploadStatus(`Uploading and compressing ${file.name}…`, false);
  try {
    const r = await fetch(`/api/documents?filename=${encodeURIComponent(file.name)}`, {
      method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
    });
    if (!r.ok) return setUploadStatus(`Upload refused: ${await errorOf(r)}`, true);
    let { job } = await r.json();
    $("file").value = "";
    // The upload returns at once; questions keep working while the job compresses and indexes.
    while (job.status === "queued" || job.status === "running") {
      const { done, total } = job.progress;
      setUploadStatus(`${job.name}: ${job.stage}${total ? ` ${Math.round((100 * done) / total)}%` : ""}…`, false);
      await new Promise((resolve) => setTimeout(resolve, 500));
      const poll = await fetch(`/api/jobs/${encodeURIComponent(job.id)}`);
      if (!poll.ok) return setUploadStatus(`Upload status unknown: ${await errorOf(poll)}`, true);
      ({ job } = await poll.json());
    }
    if (job.status === "failed") return setUploadStatus(`Indexing ${job.name} failed: ${job.error}`, true);
    setUploadStatus(`Indexed ${job.document.name}: ${job.document.chunks} passages.`, false);
    await loadDocuments();
  } catch (e) {
    setUploadStatus(`Upload failed: ${e.message}`, true);
  } finally {
    $("upload").disabled = false;
  }
}

function showAskError(text) {
  const box = $("ask-error");
  box.textContent = text;
  box.hidden = !text;
}

function renderSources(sources) {
  $("sources").replaceChildren(...sources.map((s) => {
    const li = el("li", "source");
    const score = s.score === null ? "" : ` · score ${s.score.toFixed(3)}`;
    li.append(el("span", "file", s.file), el("span", "muted", score), el("span", "snippet", s.snippet));
    return li;
  }));
}

function addHistory(question, done) {
  const row = document.createElement("tr");
  const cells = [done.mode, question, done.ttft === null ? "-" : done.ttft.toFixed(2), done.seconds.toFixed(2),
    String(done.positions), String(done.context_positions)];
  row.append(...cells.map((c) => el("td", "", c)));
  $("history").tBodies[0].prepend(row);
}

function handleEvent(event, question) {
  const box = $("answer-box");
  if (event.type === "sources") {
    renderSources(event.sources);
    $("stats").textContent = `${event.positions} decoder positions (${event.context_positions} for the context) · decoding…`;
  } else if (event.type === "token") {
    $("answer").textContent += event.text;
  } else if (event.type === "done") {
    if (!$("answer").textContent) $("answer").textContent = "(the decoder gave an empty answer)";
    const ttft = event.ttft === null ? "-" : `${event.ttft.toFixed(2)} s`;
    $("stats").textContent = `${event.mode} · first token ${ttft} · total ${event.seconds.toFixed(2)} s · ` +
      `${event.positions} decoder positions (${event.context_positions} for the context)`;
    addHistory(question, event);
    box.dataset.state = "done";
  } else if (event.type === "error") {
    showAskError(event.error);
    box.dataset.state = "error";
  }
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value;
  const mode = document.querySelector('input[name="mode"]:checked').value;
  const box = $("answer-box");
  showAskError("");
  $("ask").disabled = true;
  try {
    const r = await fetch("/api/ask", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ question, mode }),
    });
    if (!r.ok) {
      showAskError(await errorOf(r));
      box.dataset.state = "error";
      return;
    }
    $("answer").textContent = "";
    $("answer-mode").textContent = `(${mode})`;
    $("sources").replaceChildren();
    box.dataset.state = "streaming";
    const reader = r.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.trim()) handleEvent(JSON.parse(line), question);
      }
    }
    if (box.dataset.state === "streaming") {
      showAskError("The answer stream ended early: see the server log.");
      box.dataset.state = "error";
    }
  } catch (e) {
    showAskError(`Request failed: ${e.message}`);
    box.dataset.state = "error";
  } finally {
    $("ask").disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("upload-form").addEventListener("submit", upload);
  $("ask-form").addEventListener("submit", ask);
  loadInfo().catch((e) => { $("info").textContent = `cannot reach the server: ${e.message}`; });
  loadDocuments().catch(() => {});
});
