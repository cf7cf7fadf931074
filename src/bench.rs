#[derive(clap::Args, Debug)] pub struct BenchArgs {} pub fn run(_a: BenchArgs) -> anyhow::Result<()> { Ok(()) }
