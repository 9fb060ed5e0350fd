//! The `comfy-reality` binary as a process the test can kill: started with
//! `serve` on port 0 and a configuration file, its address read from the
//! first line it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};

use std::collections::HashMap;

use comfy_reality::pb::ListEventsRequest;
use comfy_reality::pb::event::Payload;
use comfy_reality::pb::event_service_client::EventServiceClient;
use tonic::transport::Channel;

/// A running server process; killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `serve --listen 127.0.0.1:0 --config CONFIG` (warnings only on
    /// a discarded stderr) and waits for the address it prints. With
    /// `COMFY_REALITY_TEST_LOGS=DIR` in the environment, each process logs at
    /// info to a file of its own in DIR instead (for a failure's post-mortem).
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, |_| {})
    }

    /// [`ServerProcess::start`], the command changed by `tweak` first (its environment).
    pub fn start_with(config: &Path, tweak: impl FnOnce(&mut std::process::Command)) -> Self {
        let (level, stderr) = match std::env::var_os("COMFY_REALITY_TEST_LOGS") {
            Some(dir) => {
                let path = Path::new(&dir).join(format!(
                    "server-{}.log",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                ));
                let file = std::fs::File::create(path).expect("the log file");
                ("info", Stdio::from(file))
            }
            None => ("warning", Stdio::null()),
        };
        let mut command = super::clean_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .args(["--log-level", level])
            .stdout(Stdio::piped())
            .stderr(stderr);
        tweak(&mut command);
        let mut child = command.spawn().expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("a first line");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        Self { child, addr }
    }

    /// A connected channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connects")
    }

    /// SIGKILL, then waits for the process to end.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to end.
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The whole retained event log, page after page: every event's sequence
/// in order, and how many `execution.completed` events each execution got.
pub async fn event_log(channel: Channel) -> (Vec<u64>, HashMap<String, usize>) {
    let mut events = EventServiceClient::new(channel);
    let mut sequences = Vec::new();
    let mut completed: HashMap<String, usize> = HashMap::new();
    let mut token = String::new();
    loop {
        let page = events
            .list_events(ListEventsRequest {
                page_size: 1000,
                page_token: token.clone(),
                include_node_events: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        for event in &page.events {
            sequences.push(event.sequence);
            if let Some(Payload::RuntimeEvent(r)) = &event.payload
                && r.event_type == "execution.completed"
            {
                *completed
                    .entry(event.execution_id.clone().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    (sequences, completed)
}
