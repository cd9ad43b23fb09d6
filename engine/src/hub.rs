//! Models named by Hugging Face repo id (`Qwen/Qwen2-0.5B-Instruct`): downloaded with the `hf-hub` crate
//! into the standard Hugging Face cache, and found there again without the network.
//!
//! - The cache is the one transformers and `huggingface-cli` use: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//!   else `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. Layout:
//!   `models--ORG--NAME/refs/main` holds a commit id, `models--ORG--NAME/snapshots/<commit>/` the files.
//! - A snapshot that already holds every file needed is used as it is, with no network access.
//! - `HF_HUB_OFFLINE=1` (which the hf-hub crate does not read) restricts the lookup to the cache.
//! - `HF_ENDPOINT` replaces `https://huggingface.co` (a mirror); `HF_TOKEN`/`$HF_HOME/token` is sent.
//! - Before downloading, the endpoint is probed with a short connect timeout, so that a machine
//!   without access to the Hub gets a clear error in seconds instead of a long hang.

use crate::error::{Error, Result};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The model `glint run` and `glint chat` use when `-m` is not given.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2-0.5B-Instruct";

/// How long the reachability probe of the endpoint may take (name lookup and TCP connect).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

/// Files a model directory needs besides the weights (optional ones are skipped when absent).
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 2] = ["generation_config.json", "tokenizer_config.json"];
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
/// What [`hub_error`] calls the repo's file listing.
const LISTING: &str = "the file list";

/// A local model path for `arg`: an existing file or directory is returned as it is; anything else that
/// looks like a repo id (`NAME` or `ORG/NAME`) is looked up in the Hugging Face cache and, unless
/// `HF_HUB_OFFLINE` is set, downloaded (config, tokenizer, generation config and safetensors weights,
/// sharded or not). `progress` shows download bars on stderr (hidden when it is not a terminal).
pub fn resolve_model(arg: &str, progress: bool) -> Result<PathBuf> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !is_repo_id(arg) {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no such file or directory (give a model directory, a GGUF file, or a Hugging Face repo id like Qwen/Qwen2-0.5B-Instruct)",
            ),
        ));
    }
    let cache = cache_dir()?;
    if let Some(dir) = cached_snapshot(&cache, arg)? {
        return Ok(dir);
    }
    if offline() {
        return Err(Error::Input(format!(
            "model '{arg}' is neither a local path nor in the Hugging Face cache ({}), and HF_HUB_OFFLINE is set, \
             so it is not downloaded. Unset HF_HUB_OFFLINE to download it, or fetch the model another way \
             (e.g. scripts/fetch-model.sh, or `huggingface-cli download {arg}` on a connected machine) and pass \
             its directory with -m PATH",
            cache.display()
        )));
    }
    download(&cache, arg, progress)
}

/// The Hugging Face hub cache directory (see the module docs for the variables honoured).
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return Ok(p);
    }
    if let Some(p) = var("HF_HOME") {
        return Ok(p.join("hub"));
    }
    if let Some(p) = var("XDG_CACHE_HOME") {
        return Ok(p.join("huggingface").join("hub"));
    }
    match var("HOME").or_else(|| var("USERPROFILE")) {
        Some(home) => Ok(home.join(".cache").join("huggingface").join("hub")),
        None => Err(Error::Input(
            "no home directory to find the Hugging Face cache in: set HF_HUB_CACHE or HF_HOME"
                .into(),
        )),
    }
}

/// `HF_HUB_OFFLINE` set to a true value (1, true, yes, on), as huggingface_hub reads it.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// `NAME` or `ORG/NAME` with the characters the Hub allows (letters, digits, `-`, `_`, `.`).
pub fn is_repo_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.ends_with(".gguf")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    let mut parts = s.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, None) => part(a),
        (Some(a), Some(b), None) => part(a) && part(b),
        _ => false,
    }
}

/// The snapshot directory of `repo` in the cache (through `refs/main`), when it holds every file a model
/// needs; `Ok(None)` when the repo or a file is missing.
pub fn cached_snapshot(cache: &Path, repo: &str) -> Result<Option<PathBuf>> {
    let entry = hf_hub::Cache::new(cache.to_path_buf()).model(repo.to_string());
    let Some(config) = entry.get("config.json") else {
        return Ok(None);
    };
    let dir = config.parent().expect("a file in a snapshot").to_path_buf();
    let have = |f: &str| entry.get(f).is_some();
    if !REQUIRED.iter().all(|f| have(f)) {
        return Ok(None);
    }
    if have(SINGLE) {
        return Ok(Some(dir));
    }
    if have(INDEX) {
        let shards = shard_names(&dir.join(INDEX))?;
        if shards.iter().all(|s| have(s)) {
            return Ok(Some(dir));
        }
    }
    Ok(None)
}

/// The shard file names listed by a `model.safetensors.index.json` (`weight_map` values), deduplicated.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let v = crate::config::read_json(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no 'weight_map' object"))?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if let Some(bad) = names
        .iter()
        .find(|n| n.contains("..") || n.starts_with('/'))
    {
        return Err(Error::format(
            index,
            format!("shard name '{bad}' leaves the repository"),
        ));
    }
    Ok(names)
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

fn unreachable_help(repo: &str) -> String {
    format!(
        "Fetch the model another way and pass its path with -m PATH (e.g. scripts/fetch-model.sh, or \
         `huggingface-cli download {repo}` on a connected machine, then copy its snapshot directory or the \
         whole cache), or set HF_ENDPOINT to a mirror that is reachable"
    )
}

/// Fail fast when the endpoint cannot be reached: name lookup and TCP connect within
/// [`CONNECT_TIMEOUT`]. Skipped when a proxy is configured (ureq connects through it).
fn probe(endpoint: &str, repo: &str) -> Result<()> {
    let proxied = [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if proxied {
        return Ok(());
    }
    let (https, rest) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => (true, endpoint),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let target = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let (tx, rx) = mpsc::channel();
    let t = target.clone();
    // Name lookup has no timeout of its own: run the probe on a thread and stop waiting for it.
    std::thread::spawn(move || {
        let result = (|| {
            let addrs: Vec<_> = t.to_socket_addrs()?.collect();
            let mut last =
                std::io::Error::new(std::io::ErrorKind::NotFound, "the name has no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })();
        let _ = tx.send(result);
    });
    let why = match rx.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(1)) {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
    };
    Err(Error::Input(format!(
        "model '{repo}' is not a local path, and it is not in the Hugging Face cache, and {endpoint} cannot be \
         reached to download it ({target}: {why}). {}",
        unreachable_help(repo)
    )))
}

fn hub_error(repo: &str, file: &str, e: hf_hub::api::sync::ApiError) -> Error {
    use hf_hub::api::sync::ApiError;
    let msg = match &e {
        ApiError::RequestError(re) => match re.as_ref() {
            ureq::Error::Status(404, _) if file == LISTING => {
                return Error::Input(format!(
                    "Hugging Face repo '{repo}' not found at {} (check the repo id, it is case-sensitive; a private \
                     repo needs HF_TOKEN)",
                    endpoint()
                ))
            }
            ureq::Error::Status(404, _) => {
                return Error::Input(format!("Hugging Face repo '{repo}': {file} not found"))
            }
            ureq::Error::Status(401 | 403, _) => {
                return Error::Input(format!(
                    "Hugging Face repo '{repo}': access to {file} denied (a gated or private repo needs a token: \
                     set HF_TOKEN or run `huggingface-cli login`)"
                ))
            }
            ureq::Error::Transport(_) => {
                return Error::Input(format!(
                    "downloading {file} of '{repo}' from {} failed: {e}. {}",
                    endpoint(),
                    unreachable_help(repo)
                ))
            }
            ureq::Error::Status(..) => e.to_string(),
        },
        _ => e.to_string(),
    };
    Error::Input(format!("downloading {file} of '{repo}': {msg}"))
}

fn download(cache: &Path, repo: &str, progress: bool) -> Result<PathBuf> {
    let endpoint = endpoint();
    probe(&endpoint, repo)?;
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env()
        .with_endpoint(endpoint)
        .with_cache_dir(cache.to_path_buf())
        .with_progress(progress);
    if let Some(token) = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()) {
        builder = builder.with_token(Some(token));
    }
    let api = builder
        .build()
        .map_err(|e| hub_error(repo, "(client)", e))?;
    let r = api.model(repo.to_string());
    let info = r.info().map_err(|e| hub_error(repo, LISTING, e))?;
    let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    let mut files: Vec<String> = vec![];
    for f in REQUIRED {
        if !listed(f) {
            return Err(Error::Input(format!(
                "Hugging Face repo '{repo}' has no {f}: glint needs a transformers model directory \
                 (config.json, tokenizer.json, model.safetensors); for a GGUF repo, download the .gguf file and \
                 pass its path with -m"
            )));
        }
        files.push(f.to_string());
    }
    files.extend(OPTIONAL.iter().filter(|f| listed(f)).map(|f| f.to_string()));
    let get = |f: &str| r.get(f).map_err(|e| hub_error(repo, f, e));
    if listed(SINGLE) {
        files.push(SINGLE.to_string());
    } else if listed(INDEX) {
        let index = get(INDEX)?;
        files.extend(shard_names(&index)?);
    } else {
        return Err(Error::Input(format!(
            "Hugging Face repo '{repo}' has no {SINGLE} or {INDEX} (glint reads safetensors weights; \
             for a GGUF repo, download the .gguf file and pass its path with -m)"
        )));
    }
    let mut dir = None;
    for f in &files {
        let p = get(f)?;
        dir.get_or_insert_with(|| p.parent().expect("a file in a snapshot").to_path_buf());
    }
    Ok(dir.expect("config.json at least"))
}

#[cfg(test)]
mod tests {
    use super::is_repo_id;

    #[test]
    fn repo_ids_and_paths() {
        for id in ["Qwen/Qwen2-0.5B-Instruct", "gpt2", "org_1/name.v2"] {
            assert!(is_repo_id(id), "{id}");
        }
        for p in [
            "/abs/dir",
            "./x",
            "a/b/c",
            "models/x.gguf",
            "x.gguf",
            "",
            "a//b",
            "../up",
            "a b/c",
        ] {
            assert!(!is_repo_id(p), "{p}");
        }
    }
}
