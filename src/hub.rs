//! The Hugging Face hub: model and dataset files fetched with hf-hub into the hub cache
//! that transformers and `datasets` use, and found there (without network) on later runs.
//!
//! Settings come from the same environment variables as Python's `huggingface_hub`:
//! `HF_ENDPOINT`, `HF_HUB_CACHE` (else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`),
//! `HF_HUB_OFFLINE`, `HF_TOKEN` (else the token file `huggingface-cli login` writes),
//! `HF_HUB_ETAG_TIMEOUT` and `HF_HUB_DOWNLOAD_TIMEOUT` (seconds, 10 by default).
//!
//! hf-hub's client has no timeouts: a server that accepts the connection and never answers
//! would block it forever. Every request therefore runs in a thread of its own, watched
//! from the caller's thread: a request that gets no answer within the ETag timeout, or a
//! download that receives nothing for the download timeout, is abandoned with an error
//! (the blocked thread is left behind; it holds only its socket and the file's lock).
//! A download that ends short of the size the hub announced is removed from the cache.
//!
//! This is a bottom-layer module: it knows files and repositories, not models.

use anyhow::Result;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the hub, read from the environment.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub endpoint: String,
    /// The hub cache (`models--ORG--NAME/{blobs,refs,snapshots}` folders).
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    /// Never touch the network: only what the cache holds.
    pub offline: bool,
    /// Longest wait for the answer to a request (metadata, listings).
    pub etag_timeout: Duration,
    /// Longest silence in the middle of a download.
    pub download_timeout: Duration,
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn truthy(name: &str) -> bool {
    env_nonempty(name).is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

fn seconds(name: &str, default: f64) -> Duration {
    let s = env_nonempty(name).and_then(|v| v.trim().parse::<f64>().ok()).filter(|s| s.is_finite() && *s > 0.0).unwrap_or(default);
    Duration::from_secs_f64(s)
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    if let Some(h) = env_nonempty("HF_HOME") {
        return PathBuf::from(h);
    }
    let cache = env_nonempty("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| env_nonempty("HOME").map(|h| Path::new(&h).join(".cache")));
    cache.unwrap_or_else(|| PathBuf::from(".cache")).join("huggingface")
}

impl HubSettings {
    pub fn from_env() -> Self {
        let home = hf_home();
        let cache_dir = env_nonempty("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let token = env_nonempty("HF_TOKEN").map(|t| t.trim().to_string()).or_else(|| {
            let path = env_nonempty("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Self {
            endpoint: env_nonempty("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()).trim_end_matches('/').to_string(),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE"),
            etag_timeout: seconds("HF_HUB_ETAG_TIMEOUT", 10.0),
            download_timeout: seconds("HF_HUB_DOWNLOAD_TIMEOUT", 10.0),
        }
    }

    fn cache(&self) -> Cache {
        Cache::new(self.cache_dir.clone())
    }

    fn api(&self) -> Result<Api, HubError> {
        ApiBuilder::from_cache(self.cache())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_user_agent("alignscope", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| HubError::new(HubErrorKind::Other, format!("cannot set up the hub client: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// A repository on the hub (branch `main`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    pub id: String,
    pub kind: RepoKind,
}

impl HubRepo {
    pub fn model(id: &str) -> Self {
        Self { id: id.to_string(), kind: RepoKind::Model }
    }

    pub fn dataset(id: &str) -> Self {
        Self { id: id.to_string(), kind: RepoKind::Dataset }
    }

    fn repo(&self) -> Repo {
        Repo::new(self.id.clone(), if self.kind == RepoKind::Model { RepoType::Model } else { RepoType::Dataset })
    }

    /// How the hub's web pages and `hf://` URLs name it.
    pub fn display(&self) -> String {
        match self.kind {
            RepoKind::Model => self.id.clone(),
            RepoKind::Dataset => format!("datasets/{}", self.id),
        }
    }

    /// The repository's folder in the hub cache.
    pub fn cache_folder(&self, settings: &HubSettings) -> PathBuf {
        settings.cache_dir.join(self.repo().folder_name())
    }
}

/// What went wrong, for callers that act on it (a missing repository is not an outage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubErrorKind {
    RepoNotFound,
    EntryNotFound,
    /// Private or gated: a token (or a better one) is needed.
    AccessDenied,
    /// Offline, or the server cannot be reached: the cache did not have it.
    NotCached,
    Unreachable,
    Timeout,
    /// A download ended early.
    Cut,
    Other,
}

#[derive(Debug, Clone)]
pub struct HubError {
    pub kind: HubErrorKind,
    message: String,
}

impl HubError {
    fn new(kind: HubErrorKind, message: String) -> Self {
        Self { kind, message }
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HubError {}

/// Whether an error (anywhere in its chain) is the hub saying that a repository does not
/// exist (or is hidden from us).
pub fn is_repo_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<HubError>().is_some_and(|h| h.kind == HubErrorKind::RepoNotFound))
}

/// A download in progress, as shown to the user.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadStatus {
    pub repo: String,
    pub file: String,
    pub done: u64,
    pub total: u64,
    /// The first report of this download.
    pub starting: bool,
    pub finished: bool,
}

impl DownloadStatus {
    /// One line for a person: "downloading R F: 120 of 548 MB", "downloaded R F (548 MB)".
    pub fn line(&self) -> String {
        if self.finished {
            format!("downloaded {} {} ({})", self.repo, self.file, size(self.total))
        } else if self.starting {
            format!("downloading {} {} ({})", self.repo, self.file, size(self.total))
        } else {
            format!("downloading {} {}: {} of {}", self.repo, self.file, size(self.done), size(self.total))
        }
    }
}

/// Bytes in the unit that shows them best (decimal, as the hub shows sizes).
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1000 => format!("{b} B"),
        b if b < 1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        b if b < 1_000_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b => format!("{:.2} GB", b as f64 / 1e9),
    }
}

type ProgressSink = Arc<dyn Fn(&DownloadStatus) + Send + Sync>;

static PROGRESS: RwLock<Option<ProgressSink>> = RwLock::new(None);

/// Where download progress goes (the command line prints it on stderr, the explorer shows
/// it in its status line). Downloads run in whatever thread asks for a file, so the sink is
/// process-wide, like a logger.
pub fn set_progress_sink(sink: impl Fn(&DownloadStatus) + Send + Sync + 'static) {
    *PROGRESS.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(sink));
}

fn report(status: &DownloadStatus) {
    let sink = PROGRESS.read().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(sink) = sink {
        sink(status);
    }
}

/// What the watched download thread last did; read by the watchdog.
struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last sign of life.
    last_ms: AtomicU64,
    /// 0: waiting for the metadata answer; 1: receiving the file.
    phase: AtomicU8,
    total: AtomicU64,
    done: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            phase: AtomicU8::new(0),
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn idle(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

/// hf-hub's progress hook, used as a heartbeat: it says when the metadata answer came
/// (`init`) and when bytes arrive (`update`).
struct Heartbeat(Arc<Activity>);

impl hf_hub::api::Progress for Heartbeat {
    fn init(&mut self, size: usize, _filename: &str) {
        self.0.total.store(size as u64, Ordering::SeqCst);
        self.0.done.store(0, Ordering::SeqCst);
        self.0.phase.store(1, Ordering::SeqCst);
        self.0.touch();
    }

    fn update(&mut self, size: usize) {
        self.0.done.fetch_add(size as u64, Ordering::SeqCst);
        self.0.touch();
    }

    fn finish(&mut self) {}
}

/// Runs `work` in its own thread and waits for it while `stalled` says it is alive.
fn watched<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
    mut stalled: impl FnMut() -> Option<HubError>,
) -> Result<T, HubError> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("alignscope-hub".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| HubError::new(HubErrorKind::Other, format!("cannot start the download of {what}: {e}")))?;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => return Ok(r),
            Err(RecvTimeoutError::Timeout) => {
                if let Some(e) = stalled() {
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(HubError::new(HubErrorKind::Other, format!("the download of {what} failed unexpectedly")));
            }
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{s:.0} s") } else { format!("{s:.1} s") }
}

/// The file if the hub cache has it (no network).
pub fn cached(settings: &HubSettings, repo: &HubRepo, file: &str) -> Option<PathBuf> {
    settings.cache().repo(repo.repo()).get(file)
}

/// The file from the cache, else downloaded into it. Returns its path in the snapshot
/// folder (`snapshots/COMMIT/FILE`, a link into `blobs/`).
pub fn fetch(settings: &HubSettings, repo: &HubRepo, file: &str) -> Result<PathBuf, HubError> {
    if let Some(p) = settings.cache().repo(repo.repo()).get(file) {
        return Ok(p);
    }
    if settings.offline {
        return Err(HubError::new(
            HubErrorKind::NotCached,
            format!("{file} of {} is not in the hub cache ({}) and HF_HUB_OFFLINE is set", repo.display(), settings.cache_dir.display()),
        ));
    }
    let api = settings.api()?;
    let activity = Activity::new();
    let beat = Heartbeat(activity.clone());
    let (repo_h, file_t) = (repo.repo(), file.to_string());
    let what = format!("{file} of {}", repo.display());
    let mut last_report = Instant::now();
    let mut announced = false;
    let status = |a: &Activity, starting: bool, finished: bool| DownloadStatus {
        repo: repo.display(),
        file: file.to_string(),
        done: a.done.load(Ordering::SeqCst),
        total: a.total.load(Ordering::SeqCst),
        starting,
        finished,
    };
    let result = watched(
        &what,
        move || api.repo(repo_h).download_with_progress(&file_t, beat),
        || {
            let receiving = activity.phase.load(Ordering::SeqCst) == 1;
            if receiving && (!announced || last_report.elapsed() >= Duration::from_millis(200)) {
                report(&status(&activity, !announced, false));
                announced = true;
                last_report = Instant::now();
            }
            let idle = activity.idle();
            if !receiving && idle > settings.etag_timeout {
                return Some(HubError::new(
                    HubErrorKind::Timeout,
                    format!(
                        "the hub at {} did not answer within {} for {what} (HF_HUB_ETAG_TIMEOUT sets the wait)",
                        settings.endpoint,
                        secs(settings.etag_timeout)
                    ),
                ));
            }
            if receiving && idle > settings.download_timeout {
                return Some(HubError::new(
                    HubErrorKind::Timeout,
                    format!(
                        "the download of {what} stalled: nothing arrived for {} after {} of {} bytes (HF_HUB_DOWNLOAD_TIMEOUT sets the wait); run again to resume it",
                        secs(settings.download_timeout),
                        activity.done.load(Ordering::SeqCst),
                        activity.total.load(Ordering::SeqCst)
                    ),
                ));
            }
            None
        },
    )?;
    let path = result.map_err(|e| explain(settings, repo, Some(file), e, &activity))?;
    // hf-hub trusts the connection's end: a body cut short without a Content-Length (or a
    // server that ignored the resume range) would be published as the file. Check it.
    let total = activity.total.load(Ordering::SeqCst);
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len != total {
        let blob = std::fs::canonicalize(&path).ok();
        let _ = std::fs::remove_file(&path);
        if let Some(b) = blob {
            let _ = std::fs::remove_file(b);
        }
        return Err(HubError::new(
            HubErrorKind::Cut,
            format!(
                "the download of {what} was cut off: {len} of {total} bytes arrived; the partial file was removed, run again to fetch it"
            ),
        ));
    }
    report(&status(&activity, !announced, true));
    Ok(path)
}

/// The hub's answer to a failed request, in words that say what to do.
fn explain(settings: &HubSettings, repo: &HubRepo, file: Option<&str>, e: ApiError, activity: &Activity) -> HubError {
    use HubErrorKind::*;
    let target = match file {
        Some(f) => format!("{f} of {}", repo.display()),
        None => repo.display(),
    };
    let endpoint = &settings.endpoint;
    let has_token = settings.token.is_some();
    let refused_token = "the token in HF_TOKEN (or the saved login) was not accepted for it";
    match e {
        ApiError::RequestError(err) => match *err {
            ureq::Error::Status(code, resp) => {
                let error_code = resp.header("x-error-code").unwrap_or("").to_string();
                let hub_message = resp.header("x-error-message").map(|m| format!(" ({m})")).unwrap_or_default();
                match (code, error_code.as_str()) {
                    (_, "RepoNotFound") => HubError::new(
                        RepoNotFound,
                        if has_token || code == 404 {
                            format!("{endpoint} has no repository {} that this token can read (HTTP {code}){hub_message}", repo.display())
                        } else {
                            format!(
                                "{endpoint} has no public repository {} (HTTP {code}): check the name; if it is private, set HF_TOKEN to a token that can read it",
                                repo.display()
                            )
                        },
                    ),
                    (_, "GatedRepo") if has_token => HubError::new(
                        AccessDenied,
                        format!(
                            "{} is gated (HTTP {code}) and the token in HF_TOKEN (or the saved login) has no access to it: accept its conditions at {endpoint}/{} with that account",
                            repo.display(),
                            repo.display()
                        ),
                    ),
                    (_, "GatedRepo") => HubError::new(
                        AccessDenied,
                        format!(
                            "{} is gated (HTTP {code}): accept its conditions at {endpoint}/{} and set HF_TOKEN to a token of that account",
                            repo.display(),
                            repo.display()
                        ),
                    ),
                    (401 | 403, _) if has_token => {
                        HubError::new(AccessDenied, format!("access to {target} was refused (HTTP {code}): {refused_token}{hub_message}"))
                    }
                    (401 | 403, _) => HubError::new(
                        AccessDenied,
                        format!(
                            "access to {target} was refused (HTTP {code}): it is private or gated; set HF_TOKEN to a token that can read it{hub_message}"
                        ),
                    ),
                    (404, _) | (_, "EntryNotFound") => {
                        HubError::new(EntryNotFound, format!("{} has no file {} (HTTP {code})", repo.display(), file.unwrap_or("?")))
                    }
                    (416, _) => HubError::new(
                        Other,
                        format!(
                            "the hub refused to resume {target} (HTTP 416): delete the .part files in {}/blobs and run again",
                            repo.cache_folder(settings).display()
                        ),
                    ),
                    _ => HubError::new(Other, format!("{endpoint} answered HTTP {code} for {target}{hub_message}: try again later")),
                }
            }
            ureq::Error::Transport(t) => {
                let how = t.message().map(str::to_string).unwrap_or_else(|| format!("{:?}", t.kind()));
                match t.kind() {
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns | ureq::ErrorKind::ProxyConnect => HubError::new(
                        Unreachable,
                        format!(
                            "cannot reach the hub at {endpoint} ({how}) for {target}, and the hub cache ({}) does not have it",
                            settings.cache_dir.display()
                        ),
                    ),
                    ureq::ErrorKind::Io => cut_or_io(settings, &target, activity, std::io::Error::other(how)),
                    _ => HubError::new(Other, format!("the request for {target} to {endpoint} failed: {how}")),
                }
            }
        },
        ApiError::IoError(io) => cut_or_io(settings, &target, activity, io),
        ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => HubError::new(
            Other,
            format!(
                "the answer of {endpoint} for {target} lacks a valid {h} header, which the Hugging Face hub sends: is HF_ENDPOINT a hub?"
            ),
        ),
        ApiError::LockAcquisition(p) => HubError::new(
            Other,
            format!(
                "another download of {target} holds its lock ({}): wait for it to finish (or, if it is stuck, quit alignscope and run again)",
                p.display()
            ),
        ),
        ApiError::InvalidResume => HubError::new(
            Other,
            format!(
                "the partial download of {target} is longer than the file: delete the .part files in {}/blobs and run again",
                repo.cache_folder(settings).display()
            ),
        ),
        other => HubError::new(Other, format!("cannot fetch {target} from {endpoint}: {other}")),
    }
}

fn cut_or_io(settings: &HubSettings, target: &str, activity: &Activity, io: std::io::Error) -> HubError {
    use std::io::ErrorKind as K;
    let network =
        matches!(io.kind(), K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::TimedOut | K::Other);
    if network && activity.phase.load(Ordering::SeqCst) == 1 {
        HubError::new(
            HubErrorKind::Cut,
            format!(
                "the download of {target} was cut off after {} of {} bytes ({io}); run again to resume it",
                activity.done.load(Ordering::SeqCst),
                activity.total.load(Ordering::SeqCst)
            ),
        )
    } else if network {
        HubError::new(HubErrorKind::Unreachable, format!("the connection to {} broke while asking for {target} ({io})", settings.endpoint))
    } else {
        HubError::new(HubErrorKind::Other, format!("cannot write {target} into the hub cache {}: {io}", settings.cache_dir.display()))
    }
}

/// The files of a repository (paths inside it): from the hub, or, offline or when the hub
/// cannot be reached, from the snapshot the cache holds.
pub fn list_files(settings: &HubSettings, repo: &HubRepo) -> Result<Vec<String>, HubError> {
    let from_cache = || cached_files(settings, repo);
    if settings.offline {
        return from_cache().ok_or_else(|| {
            HubError::new(
                HubErrorKind::NotCached,
                format!("{} is not in the hub cache ({}) and HF_HUB_OFFLINE is set", repo.display(), settings.cache_dir.display()),
            )
        });
    }
    let api = settings.api()?;
    let activity = Activity::new();
    let r = repo.repo();
    let limit = settings.etag_timeout;
    let answer = watched(
        &repo.display(),
        move || api.repo(r).info(),
        || {
            (activity.idle() > limit).then(|| {
                HubError::new(
                    HubErrorKind::Timeout,
                    format!(
                        "the hub at {} did not answer within {} for the file list of {} (HF_HUB_ETAG_TIMEOUT sets the wait)",
                        settings.endpoint,
                        secs(limit),
                        repo.display()
                    ),
                )
            })
        },
    );
    let quiet = Activity::new();
    match answer.and_then(|r| r.map_err(|e| explain(settings, repo, None, e, &quiet))) {
        Ok(info) => Ok(info.siblings.into_iter().map(|s| s.rfilename).collect()),
        Err(e) if matches!(e.kind, HubErrorKind::Unreachable | HubErrorKind::Timeout) => from_cache().ok_or(e),
        Err(e) => Err(e),
    }
}

/// The files of the cached snapshot of `main`, if any.
fn cached_files(settings: &HubSettings, repo: &HubRepo) -> Option<Vec<String>> {
    let folder = repo.cache_folder(settings);
    let commit = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    let snapshot = folder.join("snapshots").join(commit.trim());
    let mut out = Vec::new();
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let p = e.path();
            if p.is_dir() {
                walk(&p, &rel, out);
            } else if p.is_file() {
                out.push(rel);
            }
        }
    }
    walk(&snapshot, "", &mut out);
    out.sort();
    Some(out)
}

/// Fetches the files of a GPT-2 model repository (config, tokenizer, weights: one file or
/// the shards of an index) and returns the snapshot folder that holds them.
pub fn model_snapshot(settings: &HubSettings, repo_id: &str) -> Result<PathBuf> {
    let repo = HubRepo::model(repo_id);
    let config = fetch(settings, &repo, "config.json")?;
    fetch(settings, &repo, "tokenizer.json")?;
    match fetch(settings, &repo, "model.safetensors") {
        Ok(_) => {}
        Err(single) if single.kind == HubErrorKind::EntryNotFound || single.kind == HubErrorKind::NotCached => {
            let index = match fetch(settings, &repo, "model.safetensors.index.json") {
                Ok(i) => i,
                Err(e) if e.kind == HubErrorKind::EntryNotFound => {
                    anyhow::bail!("{repo_id} has no model.safetensors (nor a sharded index): alignscope reads safetensors weights only")
                }
                Err(_) => return Err(single.into()),
            };
            for shard in shard_names(&index)? {
                fetch(settings, &repo, &shard)?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(config.parent().expect("a snapshot file has a folder").to_path_buf())
}

/// The shard files a `model.safetensors.index.json` names.
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(index).with_context(|| format!("cannot read {}", index.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| anyhow::anyhow!("{} has no weight_map", index.display()))?;
    let files: std::collections::BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
    Ok(files.into_iter().collect())
}

/// `hf://datasets/OWNER/NAME[/PATH]`: a file, folder or glob inside a dataset repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfUrl {
    pub repo: HubRepo,
    /// Inside the repository; empty for its top.
    pub path: String,
}

impl HfUrl {
    /// Parses `hf://datasets/OWNER/NAME/PATH` (`hf://OWNER/NAME/PATH` names a model repo).
    pub fn parse(s: &str) -> Option<Result<Self>> {
        let rest = s.strip_prefix("hf://")?;
        let (kind, rest) = match rest.strip_prefix("datasets/") {
            Some(r) => (RepoKind::Dataset, r),
            None => (RepoKind::Model, rest),
        };
        let mut parts = rest.trim_matches('/').splitn(3, '/');
        let (Some(owner), Some(name)) = (parts.next(), parts.next()) else {
            return Some(Err(anyhow::anyhow!("{s} does not name a repository: use hf://datasets/OWNER/NAME/PATH")));
        };
        if owner.is_empty() || name.is_empty() || name.contains('@') {
            return Some(Err(anyhow::anyhow!("{s} does not name a repository: use hf://datasets/OWNER/NAME/PATH (branch main)")));
        }
        let path = parts.next().unwrap_or("").trim_matches('/').to_string();
        Some(Ok(Self { repo: HubRepo { id: format!("{owner}/{name}"), kind }, path }))
    }

    pub fn display(&self) -> String {
        if self.path.is_empty() { format!("hf://{}", self.repo.display()) } else { format!("hf://{}/{}", self.repo.display(), self.path) }
    }
}

/// Whether `path` matches a glob of `*` (within one folder), `**` (any folders) and `?`.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn segs(p: &[&str], s: &[&str]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(&"**"), _) => segs(&p[1..], s) || (!s.is_empty() && segs(p, &s[1..])),
            (Some(pp), Some(ss)) => seg(pp.as_bytes(), ss.as_bytes()) && segs(&p[1..], &s[1..]),
            _ => false,
        }
    }
    fn seg(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => seg(&p[1..], s) || (!s.is_empty() && seg(p, &s[1..])),
            (Some(b'?'), Some(_)) => seg(&p[1..], &s[1..]),
            (Some(a), Some(b)) => a == b && seg(&p[1..], &s[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('/').collect();
    let s: Vec<&str> = path.split('/').collect();
    segs(&p, &s)
}

pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_lines_show_sizes_in_their_unit() {
        let mut s = DownloadStatus { repo: "r".into(), file: "f".into(), done: 0, total: 548_105_171, starting: true, finished: false };
        assert_eq!(s.line(), "downloading r f (548.1 MB)");
        (s.starting, s.done) = (false, 120_000_000);
        assert_eq!(s.line(), "downloading r f: 120.0 MB of 548.1 MB");
        (s.finished, s.total) = (true, 665);
        assert_eq!(s.line(), "downloaded r f (665 B)");
        assert_eq!((size(2_110), size(1_500_000_000)), ("2.1 kB".to_string(), "1.50 GB".to_string()));
    }

    #[test]
    fn hf_urls() {
        let u = HfUrl::parse("hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1").unwrap().unwrap();
        assert_eq!(u.repo, HubRepo::dataset("Salesforce/wikitext"));
        assert_eq!(u.path, "wikitext-103-raw-v1");
        assert_eq!(u.display(), "hf://datasets/Salesforce/wikitext/wikitext-103-raw-v1");
        let top = HfUrl::parse("hf://datasets/a/b/").unwrap().unwrap();
        assert_eq!(top.path, "");
        assert!(HfUrl::parse("hf://datasets/a").unwrap().is_err());
        assert!(HfUrl::parse("data/a.txt").is_none());
    }

    #[test]
    fn globs() {
        assert!(glob_match("w/train-*.parquet", "w/train-00000-of-00002.parquet"));
        assert!(!glob_match("w/train-*.parquet", "w/sub/train-0.parquet"));
        assert!(glob_match("**/*.parquet", "a/b/c.parquet"));
        assert!(glob_match("**/*.parquet", "c.parquet"));
        assert!(glob_match("w/t?st.jsonl", "w/test.jsonl"));
        assert!(!glob_match("*.jsonl", "a.parquet"));
    }
}
