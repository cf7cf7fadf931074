#![allow(dead_code)]
//! A local stand-in for the Hugging Face hub: an HTTP/1.1 server on 127.0.0.1 (std::net,
//! a thread per connection) that speaks the part of the hub's protocol that hf-hub and
//! huggingface_hub use, as the hub answers it:
//!
//! - `GET /{repo}/resolve/main/{file}` (models) and `/datasets/{repo}/resolve/main/{file}`:
//!   small files are answered directly, with `ETag` (the git blob id), `X-Repo-Commit` and
//!   HTTP ranges (`Range: bytes=0-0` is how clients read the metadata: 206 with
//!   `Content-Range: bytes 0-0/SIZE`); LFS files (weights, parquet) are a 302 to a second
//!   server, the "CDN", with `X-Linked-Etag` (their sha256) and `X-Linked-Size`, and the
//!   CDN serves the bytes with ranges (resuming downloads ask for `bytes=N-`);
//! - `GET /api/{models,datasets}/{repo}/revision/main`: the repo info (`sha`, `siblings`);
//! - a renamed repository: a 307 with a relative `Location` to its new name;
//! - errors as the hub words them: `X-Error-Code: RepoNotFound` with 401 for an anonymous
//!   request (the hub does not say whether a private repo exists) and 404 with a token;
//!   `GatedRepo` with 401 anonymously and 403 for a token without access; `EntryNotFound`
//!   with 404; an invalid token is a 401.
//!
//! It serves the fixture GPT-2 in the hub's own key layout (no `transformer.` prefix,
//! attention-mask buffers included) as `openai-community/gpt2`, the same model as a private
//! and a gated repository, repositories lacking files, and `Salesforce/wikitext` with the
//! WikiText-shaped parquet fixtures. Faults can be injected: a download cut after N bytes
//! (with or without a Content-Length), or one that stalls.

use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const PRIVATE_TOKEN: &str = "hf_test_private_reader";
pub const GATED_TOKEN: &str = "hf_test_gated_reader";
/// Repositories that moved: (old id, new id).
pub const RENAMED: [(&str, &str); 1] = [("alignscope-test/old-gpt2", "openai-community/gpt2")];

#[derive(Clone)]
pub struct FileData {
    pub bytes: Arc<Vec<u8>>,
    /// Stored with git LFS (served through the CDN redirect).
    pub lfs: bool,
    /// The git blob id (the ETag of small files).
    pub oid: String,
    pub sha256: String,
}

#[derive(Clone, PartialEq)]
pub enum Access {
    Public,
    Private { token: String },
    Gated { token: String },
}

#[derive(Clone)]
pub struct RepoData {
    pub commit: String,
    pub files: BTreeMap<String, FileData>,
    pub access: Access,
}

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub cdn: bool,
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Debug, Clone)]
pub enum Fault {
    /// Send `after` bytes of the body, then close the connection.
    Cut { after: usize, with_length: bool },
    /// Send `after` bytes of the body, then nothing until the server stops.
    Stall { after: usize },
}

struct Shared {
    repos: Mutex<HashMap<String, RepoData>>,
    /// One-shot faults by the sha256 of the file they hit.
    faults: Mutex<HashMap<String, Fault>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    cdn_url: Mutex<String>,
}

pub struct HubServer {
    pub url: String,
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn file(bytes: Vec<u8>, lfs: bool) -> FileData {
    let mut h = Sha256::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(&bytes);
    let oid = hex(&h.finalize())[..40].to_string();
    let sha256 = sha256_hex(&bytes);
    FileData { bytes: Arc::new(bytes), lfs, oid, sha256 }
}

pub fn repo(files: Vec<(String, FileData)>, access: Access) -> RepoData {
    let mut h = Sha256::new();
    for (name, f) in &files {
        h.update(name.as_bytes());
        h.update(f.oid.as_bytes());
    }
    let commit = hex(&h.finalize())[..40].to_string();
    RepoData { commit, files: files.into_iter().map(|(n, f)| (n.to_string(), f)).collect(), access }
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fixture GPT-2's weights as the hub stores GPT-2: keys without the `transformer.`
/// prefix, the attention-mask buffers that transformers 4 saved, no lm_head (tied).
pub fn hub_layout_weights() -> Vec<u8> {
    use candle_core::{DType, Device, Tensor};
    let src = manifest().join("tests/fixtures/tiny-gpt2");
    let tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut out: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter(|(k, _)| k != "lm_head.weight")
        .map(|(k, v)| (k.strip_prefix("transformer.").unwrap_or(&k).to_string(), v))
        .collect();
    let n_layer = (0..).take_while(|i| out.contains_key(&format!("h.{i}.ln_1.weight"))).count();
    let mask = Tensor::tril2(128, DType::F32, &Device::Cpu).unwrap().reshape((1, 1, 128, 128)).unwrap();
    for i in 0..n_layer {
        out.insert(format!("h.{i}.attn.bias"), mask.clone());
    }
    let tmp = tempfile::NamedTempFile::new().unwrap();
    candle_core::safetensors::save(&out, tmp.path()).unwrap();
    std::fs::read(tmp.path()).unwrap()
}

fn fixture_bytes(rel: &str) -> Vec<u8> {
    std::fs::read(manifest().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The repositories the server starts with.
pub fn default_repos() -> Vec<(String, RepoData)> {
    let config = file(fixture_bytes("tests/fixtures/tiny-gpt2/config.json"), false);
    let tokenizer = file(fixture_bytes("tests/fixtures/tiny-gpt2/tokenizer.json"), false);
    let weights = file(hub_layout_weights(), true);
    let readme = file(b"---\nlicense: mit\n---\n# test model\n".to_vec(), false);
    let files = |v: Vec<(&str, &FileData)>| v.into_iter().map(|(n, f)| (n.to_string(), f.clone())).collect::<Vec<_>>();
    let gpt2 = |access: Access| {
        repo(
            files(vec![("README.md", &readme), ("config.json", &config), ("tokenizer.json", &tokenizer), ("model.safetensors", &weights)]),
            access,
        )
    };
    let wt = |split: &str| {
        file(fixture_bytes(&format!("tests/fixtures/wikitext-mini/wikitext-103-raw-v1/{split}-00000-of-00001.parquet")), true)
    };
    let jsonl = file(fixture_bytes("tests/fixtures/data/pyarrow-rows/train-00000-of-00001.jsonl"), false);
    let jsonl_val = file(fixture_bytes("tests/fixtures/data/pyarrow-rows/validation-00000-of-00001.jsonl"), false);
    let mut wikitext = vec![("README.md".to_string(), file(b"# wikitext (test copy)\n".to_vec(), false))];
    for config in ["wikitext-103-raw-v1", "wikitext-2-raw-v1"] {
        for split in ["test", "train", "validation"] {
            wikitext.push((format!("{config}/{split}-00000-of-00001.parquet"), wt(split)));
        }
    }
    vec![
        ("models/openai-community/gpt2".into(), gpt2(Access::Public)),
        ("models/alignscope-test/private-gpt2".into(), gpt2(Access::Private { token: PRIVATE_TOKEN.into() })),
        ("models/alignscope-test/gated-gpt2".into(), gpt2(Access::Gated { token: GATED_TOKEN.into() })),
        (
            "models/alignscope-test/no-tokenizer".into(),
            repo(files(vec![("config.json", &config), ("model.safetensors", &weights)]), Access::Public),
        ),
        (
            "models/alignscope-test/no-weights".into(),
            repo(files(vec![("config.json", &config), ("tokenizer.json", &tokenizer)]), Access::Public),
        ),
        ("datasets/Salesforce/wikitext".into(), repo(wikitext, Access::Public)),
        (
            "datasets/alignscope-test/jsonl-texts".into(),
            repo(files(vec![("train.jsonl", &jsonl), ("validation.jsonl", &jsonl_val)]), Access::Public),
        ),
    ]
}

impl HubServer {
    pub fn start() -> Self {
        Self::with_repos(default_repos())
    }

    pub fn with_repos(repos: Vec<(String, RepoData)>) -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").unwrap();
        let cdn = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", hub.local_addr().unwrap());
        let shared = Arc::new(Shared {
            repos: Mutex::new(repos.into_iter().collect()),
            faults: Mutex::new(HashMap::new()),
            seen: Mutex::new(vec![]),
            stop: AtomicBool::new(false),
            cdn_url: Mutex::new(format!("http://{}", cdn.local_addr().unwrap())),
        });
        let threads = vec![serve(hub, shared.clone(), false), serve(cdn, shared.clone(), true)];
        Self { url, shared, threads }
    }

    pub fn repo(&self, key: &str) -> RepoData {
        self.shared.repos.lock().unwrap()[key].clone()
    }

    /// Makes the next body download of `file` of `repo` (e.g. `models/openai-community/gpt2`)
    /// misbehave.
    pub fn fault(&self, repo: &str, file: &str, fault: Fault) {
        let sha = self.repo(repo).files[file].sha256.clone();
        self.shared.faults.lock().unwrap().insert(sha, fault);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Stops listening: later connections are refused.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>, cdn: bool) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !shared.stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = handle(stream, &shared, cdn);
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    range: Option<(usize, usize)>,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    }
}

fn error(status: u16, code: Option<&str>, message: &str) -> Response {
    let mut headers = vec![("X-Error-Message".to_string(), message.to_string()), ("Content-Type".into(), "application/json".into())];
    if let Some(c) = code {
        headers.push(("X-Error-Code".into(), c.into()));
    }
    let body = format!("{{\"error\":{}}}", serde_json::Value::String(message.into()));
    Response { status, headers, body: Arc::new(body.into_bytes()), range: None }
}

/// A body with HTTP range support.
fn ranged(bytes: Arc<Vec<u8>>, range: Option<&str>, mut headers: Vec<(String, String)>) -> Response {
    let len = bytes.len();
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return Response { status: 200, headers, body: bytes, range: None };
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = a.trim().parse().unwrap_or(0);
    let end: usize = if b.trim().is_empty() { len.saturating_sub(1) } else { b.trim().parse::<usize>().unwrap_or(len - 1).min(len - 1) };
    if start >= len || start > end {
        headers.push(("Content-Range".into(), format!("bytes */{len}")));
        return Response { status: 416, headers, body: Arc::new(vec![]), range: None };
    }
    headers.push(("Content-Range".into(), format!("bytes {start}-{end}/{len}")));
    Response { status: 206, headers, body: bytes, range: Some((start, end + 1)) }
}

fn check_access(repo_name: &str, data: Option<&RepoData>, auth: Option<&str>) -> Result<(), Response> {
    let token = auth.and_then(|a| a.strip_prefix("Bearer "));
    let not_found = || {
        let msg = "Repository not found";
        if token.is_some() { error(404, Some("RepoNotFound"), msg) } else { error(401, Some("RepoNotFound"), msg) }
    };
    let Some(data) = data else { return Err(not_found()) };
    let valid_tokens = [PRIVATE_TOKEN, GATED_TOKEN];
    if let Some(t) = token
        && !valid_tokens.contains(&t)
    {
        return Err(error(401, None, "Invalid credentials in Authorization header"));
    }
    match &data.access {
        Access::Public => Ok(()),
        Access::Private { token: want } => {
            if token == Some(want.as_str()) {
                Ok(())
            } else {
                Err(not_found())
            }
        }
        Access::Gated { token: want } => match token {
            Some(t) if t == want => Ok(()),
            Some(_) => Err(error(
                403,
                Some("GatedRepo"),
                &format!(
                    "Access to model {repo_name} is restricted and you are not in the authorized list. Visit https://huggingface.co/{repo_name} to ask for access."
                ),
            )),
            None => Err(error(
                401,
                Some("GatedRepo"),
                &format!(
                    "Access to model {repo_name} is restricted. You must have access to it and be authenticated to access it. Please log in."
                ),
            )),
        },
    }
}

fn route(shared: &Shared, cdn: bool, path: &str, range: Option<&str>, auth: Option<&str>) -> (Response, Option<String>) {
    if cdn {
        // /lfs/SHA256: any repo's LFS object (signed URLs in real life).
        let sha = path.strip_prefix("/lfs/").unwrap_or("");
        let repos = shared.repos.lock().unwrap();
        let found = repos.values().flat_map(|r| r.files.values()).find(|f| f.sha256 == sha).cloned();
        return match found {
            Some(f) => (ranged(f.bytes.clone(), range, vec![("ETag".into(), format!("\"{}\"", f.sha256))]), Some(f.sha256)),
            None => (error(404, None, "NoSuchKey"), None),
        };
    }
    let path = path.split('?').next().unwrap_or("");
    if let Some(rest) = path.strip_prefix("/api/") {
        let (kind, rest) = rest.split_once('/').unwrap_or(("", ""));
        let Some(repo_name) = rest.strip_suffix("/revision/main") else { return (error(404, None, "Not found"), None) };
        let key = format!("{kind}/{repo_name}");
        let repos = shared.repos.lock().unwrap();
        let data = repos.get(&key);
        if let Err(r) = check_access(repo_name, data, auth) {
            return (r, None);
        }
        let data = data.unwrap();
        let siblings: Vec<serde_json::Value> = data.files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
        let body = serde_json::json!({ "_id": "0", "id": repo_name, "sha": data.commit, "private": data.access != Access::Public, "siblings": siblings });
        let r = Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Arc::new(body.to_string().into_bytes()),
            range: None,
        };
        return (r, None);
    }
    let (kind, rest) = match path.strip_prefix("/datasets/") {
        Some(r) => ("datasets", r),
        None => ("models", path.trim_start_matches('/')),
    };
    let Some((repo_name, file_name)) = rest.split_once("/resolve/main/") else { return (error(404, None, "Not found"), None) };
    // A renamed repository answers with a relative redirect to its new name.
    if let Some(new_name) = RENAMED.iter().find(|(old, _)| *old == repo_name).map(|(_, new)| new) {
        let location = format!("/{new_name}/resolve/main/{file_name}");
        return (Response { status: 307, headers: vec![("Location".into(), location)], body: Arc::new(vec![]), range: None }, None);
    }
    let key = format!("{kind}/{repo_name}");
    let repos = shared.repos.lock().unwrap();
    let data = repos.get(&key);
    if let Err(r) = check_access(repo_name, data, auth) {
        return (r, None);
    }
    let data = data.unwrap();
    let Some(f) = data.files.get(file_name) else {
        return (error(404, Some("EntryNotFound"), &format!("{file_name} does not exist on \"main\"")), None);
    };
    let commit = ("X-Repo-Commit".to_string(), data.commit.clone());
    if f.lfs {
        let location = format!("{}/lfs/{}", shared.cdn_url.lock().unwrap(), f.sha256);
        let headers = vec![
            ("Location".into(), location),
            commit,
            ("ETag".into(), format!("\"{}\"", f.oid)),
            ("X-Linked-Etag".into(), format!("\"{}\"", f.sha256)),
            ("X-Linked-Size".into(), f.bytes.len().to_string()),
        ];
        return (Response { status: 302, headers, body: Arc::new(vec![]), range: None }, None);
    }
    (ranged(f.bytes.clone(), range, vec![commit, ("ETag".into(), format!("\"{}\"", f.oid))]), Some(f.sha256.clone()))
}

fn handle(stream: TcpStream, shared: &Shared, cdn: bool) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
    let range = headers.get("range").cloned();
    let auth = headers.get("authorization").cloned();
    shared.seen.lock().unwrap().push(Seen { cdn, path: path.clone(), range: range.clone(), authorization: auth.clone() });
    let (resp, sha) = if method == "GET" || method == "HEAD" {
        route(shared, cdn, &path, range.as_deref(), auth.as_deref())
    } else {
        (error(405, None, "Method not allowed"), None)
    };
    let (start, end) = resp.range.unwrap_or((0, resp.body.len()));
    // The metadata probe (bytes=0-0) is never faulted: faults hit the download itself.
    let fault = match (&sha, range.as_deref()) {
        (Some(s), r) if r != Some("bytes=0-0") && resp.status < 300 => shared.faults.lock().unwrap().remove(s),
        _ => None,
    };
    let mut out = stream;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head += &format!("{k}: {v}\r\n");
    }
    let with_length = !matches!(fault, Some(Fault::Cut { with_length: false, .. }));
    if with_length {
        head += &format!("Content-Length: {}\r\n", end - start);
    }
    head += "Connection: close\r\n\r\n";
    out.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return Ok(());
    }
    let body = &resp.body[start..end];
    match fault {
        None => out.write_all(body)?,
        Some(Fault::Cut { after, .. }) => {
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()?;
        }
        Some(Fault::Stall { after }) => {
            out.write_all(&body[..after.min(body.len())])?;
            out.flush()?;
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    out.flush()?;
    let _ = out.shutdown(std::net::Shutdown::Both);
    Ok(())
}

/// A server that accepts connections (the kernel completes the handshake) and never
/// answers.
pub struct SilentServer {
    pub url: String,
    _listener: TcpListener,
}

impl SilentServer {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        Self { url: format!("http://{}", l.local_addr().unwrap()), _listener: l }
    }
}

/// A port nothing listens on (connections are refused).
pub fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// Reads the whole of a stream (for tests that talk to the server directly).
pub fn read_all(mut s: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = s.read_to_end(&mut v);
    v
}
