use std::process::ExitCode;

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
