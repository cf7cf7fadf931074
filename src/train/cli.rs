#[derive(clap::Args, Debug)] pub struct TrainArgs {}
#[derive(clap::Subcommand, Debug)] pub enum TokenizerCommand { Train }
pub fn train(_a: TrainArgs) -> anyhow::Result<()> { Ok(()) }
pub fn tokenizer(_a: TokenizerCommand) -> anyhow::Result<()> { Ok(()) }
