//! Which process listens on a local TCP port: how a ComfyUI backend on this host is found
//! without configuring its pid. Linux only (it reads `/proc/net/tcp{,6}` for the listening
//! socket's inode, then `/proc/<pid>/fd` for the process holding it); elsewhere, and for
//! processes of other users that `/proc` hides, the answer is `None` and `servers[].pid`
//! must be configured. Blocking file reads: call it from a blocking thread.

/// The pid of the process listening on TCP `port` on this host, if it can be seen.
pub fn find_listening_pid(port: u16) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                inodes.extend(listening_inodes(&text, port));
            }
        }
        if inodes.is_empty() {
            return None;
        }
        let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && wanted.iter().any(|w| target.as_os_str() == w.as_str())
                {
                    return Some(pid);
                }
            }
        }
        None
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        None
    }
}

/// The inodes of the sockets listening on `port` in one `/proc/net/tcp`-format table.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse::<u64>().ok()?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let local_port = u16::from_str_radix(hex_port, 16).ok()?;
            (local_port == port && *state == LISTEN && inode != 0).then_some(inode)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2004 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2004 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn finds_only_the_listening_socket_of_the_port() {
        // 0x2004 = 8196: the listener, not the established connection on the same port.
        assert_eq!(listening_inodes(TABLE, 8196), vec![4242]);
        assert_eq!(listening_inodes(TABLE, 8080), vec![99]);
        assert_eq!(listening_inodes(TABLE, 1), Vec::<u64>::new());
        assert_eq!(
            listening_inodes("garbage\nnot a table", 8196),
            Vec::<u64>::new()
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn finds_this_process_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(find_listening_pid(port), Some(std::process::id()));
        drop(listener);
    }
}
