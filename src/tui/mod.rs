pub fn run(_a: crate::cli::ExploreArgs) -> anyhow::Result<()> { anyhow::bail!("tui in progress") }
