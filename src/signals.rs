//! SIGINT and SIGTERM for the binaries (`ctrl_c` alone misses SIGTERM, which
//! is what Kubernetes and Docker send). Install the handlers before telling
//! anyone the process is ready, so an early signal shuts down cleanly instead
//! of killing the process.

/// Installed SIGINT and SIGTERM listeners.
pub struct ShutdownSignals {
    /// SIGTERM.
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    /// SIGINT.
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the handlers now, replacing the default (fatal) actions.
    /// Needs a running tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the first of the signals; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "ctrl-c"
        }
    }
}
