use std::process::ExitCode;

#[global_allocator]
static ALLOC: alignscope::hugepages::HugePageAlloc = alignscope::hugepages::HugePageAlloc;

fn main() -> ExitCode {
    alignscope::util::restore_sigpipe();
    alignscope::util::tune_cpu_threads();
    match alignscope::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", alignscope::util::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
