//! File descriptors: a server raises its soft limit to the hard one at start (as Go's runtime
//! does), and the HTTP connection cap stays well under it, so a flood of connections ends in
//! the cap's eviction rather than in `accept: Too many open files` for every listener.

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.
pub fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return None;
            }
            if lim.rlim_cur < lim.rlim_max {
                let want = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The HTTP connection cap: as asked, but at most half the descriptors this process may
/// open (gRPC connections, files and etcd need the rest).
pub fn connection_cap(asked: usize) -> usize {
    let asked = asked.max(1);
    match raise() {
        Some(limit) if (asked as u64) > limit / 2 => {
            let cap = (limit / 2).max(16) as usize;
            tracing::warn!(
                asked,
                cap,
                fd_limit = limit,
                "--http-max-connections is above half the open-file limit; using {cap}"
            );
            cap
        }
        _ => asked,
    }
}
