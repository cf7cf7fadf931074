//! Byte-level BPE tokenizers like GPT-2's, trained with the tokenizers crate.

use anyhow::{Result, anyhow};
use std::path::PathBuf;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::{ModelWrapper, TrainerWrapper};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer, TokenizerBuilder, TokenizerImpl,
};

pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Trains a byte-level BPE of `vocab` tokens (`<|endoftext|>` = id 0) on data files.
pub fn train_bpe(files: &[PathBuf], vocab: usize, min_frequency: u64) -> Result<Tokenizer> {
    if vocab < 257 {
        return Err(anyhow!("--vocab must be at least 257 (256 bytes + end-of-text), got {vocab}"));
    }
    // Lines with their endings, as tokenizers' own file reader feeds them; documents of
    // JSON-lines and parquet files too.
    let docs = crate::corpus::read_documents(files)?;
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab)
        .min_frequency(min_frequency)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    let mut tk: TokenizerImpl<ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper> =
        TokenizerBuilder::new()
            .with_model(ModelWrapper::BPE(BPE::default()))
            .with_normalizer(None)
            .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(ByteLevel::default().add_prefix_space(false))))
            .with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::default().trim_offsets(false))))
            .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())))
            .build()
            .map_err(|e| anyhow!("cannot build the tokenizer: {e}"))?;
    let lines = docs.iter().flat_map(|d| d.split_inclusive('\n'));
    tk.train(&mut trainer, lines).map_err(|e| anyhow!("tokenizer training failed: {e}"))?;
    Ok(Tokenizer::from(tk))
}
