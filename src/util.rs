//! Small process-level helpers.

/// "1 chunk", "8 chunks": a count and its noun, plural unless the count is one.
pub fn count_of(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

/// An error and its causes on one line, each cause's first line only (no backtraces).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        let first = s.lines().next().unwrap_or("").trim().to_string();
        if !first.is_empty() && !parts.iter().any(|p| p.contains(&first)) {
            parts.push(first);
        }
    }
    parts.join(": ")
}

/// Lets `alignscope ... | head` end quietly instead of panicking on a closed pipe.
pub fn restore_sigpipe() {
    // SAFETY: restores the default disposition of SIGPIPE; no handler runs our code.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Candle's CPU thread pool spins up to 25,000 iterations waiting for work. On a small
/// machine that spinning competes with the gemm threads for the same cores; a short spin
/// measured faster here. Must run before any thread starts; a user's setting wins.
pub fn tune_cpu_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // SAFETY: called first thing in main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000") };
    }
}

/// CPU time (user + system, all threads) this process has used, in seconds (`None` where
/// not measured). A clock read (`CLOCK_PROCESS_CPUTIME_ID`): cheap enough to take around
/// every section of a training step.
#[cfg(unix)]
pub fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: timespec is plain old data, for which all-zero bytes are a valid value.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime only writes into the struct we pass.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } != 0 {
        return None;
    }
    Some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

#[cfg(not(unix))]
pub fn process_cpu_seconds() -> Option<f64> {
    None
}

/// A number for a table: right-aligned in `width` with `decimals`, or `n/a` where it is
/// undefined.
pub fn fmt_opt(v: Option<f64>, width: usize, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:>width$.decimals$}"),
        None => format!("{:>width$}", "n/a"),
    }
}

/// A share as a percentage with one decimal (`69.4%`), or `n/a` where it is undefined.
pub fn percent(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{:.1}%", 100.0 * v))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_count_of_one_is_singular() {
        assert_eq!(super::count_of(1, "chunk"), "1 chunk");
        assert_eq!(super::count_of(0, "draft"), "0 drafts");
        assert_eq!(super::count_of(24, "chunk"), "24 chunks");
    }

    #[test]
    fn an_undefined_share_is_not_a_percentage() {
        assert_eq!(super::percent(Some(0.694)), "69.4%");
        assert_eq!(super::percent(None), "n/a");
    }
}
