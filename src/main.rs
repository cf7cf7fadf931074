use std::process::ExitCode;

fn main() -> ExitCode {
    alignscope::util::restore_sigpipe();
    match alignscope::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", alignscope::util::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
