//! Step 4 of `caracal restore verify --start`: a `caracal all` child process started against
//! the restored database, on free loopback ports, with a private replay directory, until
//! every role answers `/ready` (or a deadline passes, and the end of its log says why).

use std::{collections::HashMap, process::Stdio, time::Duration};

use control_store::settings::Lookup;
use tokio::process::{Child, Command};

/// The roles and the variables naming their listen addresses.
const ROLES: &[(&str, &str)] = &[
    ("audit", "CARACAL_AUDIT_ADDR"),
    ("sts", "CARACAL_STS_ADDR"),
    ("api", "CARACAL_API_ADDR"),
    ("coordinator", "CARACAL_COORDINATOR_ADDR"),
    ("gateway", "CARACAL_GATEWAY_ADDR"),
];

/// How long the stack may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How often `/ready` is asked.
const READY_POLL: Duration = Duration::from_millis(250);

/// A running `caracal all`.
pub(super) struct Stack {
    child: Child,
    /// Each role's base URL, by role name.
    pub(super) urls: Vec<(String, String)>,
    work: tempfile::TempDir,
}

/// Starts `caracal all` (this executable) with the environment, then the restored
/// `runtime.env`, then: the target database, `redis_url`, free ports, a private replay
/// directory, and `ISSUER_URL` (the STS's URL) when neither sets it.
pub(super) async fn start(
    database_url: &str,
    redis_url: &str,
    file_env: &HashMap<String, String>,
    lookup: Lookup<'_>,
) -> Result<Stack, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let work = tempfile::Builder::new()
        .prefix("caracal-verify-stack-")
        .tempdir()
        .map_err(|e| format!("cannot create a working directory: {e}"))?;
    let log_path = work.path().join("caracal-all.log");
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("cannot create the log: {e}"))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot create the log: {e}"))?;

    let mut command = Command::new(exe);
    command.arg("all");
    for (name, value) in file_env {
        command.env(name, value);
    }
    command
        .env_remove("CARACAL_MIGRATE_DATABASE_URL")
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url)
        .env("AUDIT_REPLAY_DIR", work.path().join("replay"))
        .env("RUST_LOG", "warn");
    let mut urls = Vec::with_capacity(ROLES.len());
    for (role, var) in ROLES {
        let port = free_port()?;
        command.env(var, format!("127.0.0.1:{port}"));
        urls.push(((*role).to_owned(), format!("http://127.0.0.1:{port}")));
    }
    let sts_url = urls
        .iter()
        .find(|(role, _)| role == "sts")
        .map(|(_, url)| url);
    if let Some(sts) =
        sts_url.filter(|_| !file_env.contains_key("ISSUER_URL") && lookup("ISSUER_URL").is_none())
    {
        command.env("ISSUER_URL", sts);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true);
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start caracal all: {e}"))?;
    let mut stack = Stack { child, urls, work };
    match stack.wait_ready().await {
        Ok(()) => Ok(stack),
        Err(error) => {
            let tail = log_tail(&log_path);
            stack.stop().await;
            Err(format!("{error}; its log ends: {tail}"))
        }
    }
}

impl Stack {
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + READY_DEADLINE;
        for (role, base) in &self.urls {
            let url = format!("{base}/ready");
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("caracal all exited ({status})"));
                }
                match crate::http_probe::get_status(&url, READY_POLL * 4).await {
                    Ok(200) => break,
                    Ok(_) | Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(READY_POLL).await;
                    }
                    Ok(status) => {
                        return Err(format!("the {role} answered /ready with {status} for 60 s"));
                    }
                    Err(error) => return Err(format!("the {role} did not answer: {error}")),
                }
            }
        }
        Ok(())
    }

    /// Stops the process (it holds nothing that must survive) and removes its directory.
    pub(super) async fn stop(mut self) {
        let _killed = self.child.kill().await;
        let _removed = self.work.close();
    }
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The last three lines of the child's log (it logs no secrets).
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
