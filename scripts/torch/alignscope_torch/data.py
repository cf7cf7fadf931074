"""Training data exactly as alignscope draws it (src/train/data.rs).

Text files (or folders of .txt files, sorted) are tokenized with the checkpoint's
tokenizer.json, each file as one document followed by end-of-text, and random windows of
ctx + 1 tokens are drawn by rand_chacha's ChaCha8Rng seeded with `seed_from_u64(seed)`,
each start by rand 0.10's `random_range(0..=len - ctx - 1)`. Both are reimplemented here
bit for bit, so the RNG's word position in training_state.json means the same thing to
both engines: a run continues on the other engine with the very batches it would have
drawn on its own.

Under torchrun every rank draws the whole global batch from the same stream and keeps its
own slice, so the windows of a step do not depend on the number of processes.
"""
from __future__ import annotations

import os
from array import array
from pathlib import Path

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

# Where the repository keeps the assets that relative data paths may name (alignscope
# resolves a relative path that does not exist here inside its project folder).
PROJECT_DIR = Path(__file__).resolve().parents[3]


def _rotl(x: int, n: int) -> int:
    return ((x << n) | (x >> (32 - n))) & MASK32


def _pcg32(state: int) -> tuple[int, int]:
    """rand_core's seed_from_u64 expander: returns (new state, 32-bit output)."""
    state = (state * 0x5851F42D4C957F2D + 0xA17654E46FBE17F3) & MASK64
    xorshifted = (((state >> 18) ^ state) >> 27) & MASK32
    rot = state >> 59
    return state, ((xorshifted >> rot) | (xorshifted << ((32 - rot) & 31))) & MASK32


class ChaCha8:
    """rand_chacha 0.10's ChaCha8Rng: 64-bit block counter, stream 0, a flat stream of
    32-bit words addressed by word position."""

    DOUBLE_ROUNDS = 4

    def __init__(self, seed: int):
        state = seed & MASK64
        key = []
        for _ in range(8):
            state, word = _pcg32(state)
            key.append(word)  # little-endian bytes of the word = the word itself
        self.key = key
        self.pos = 0  # word position
        self._block_index = -1
        self._block: list[int] = []

    def _block_words(self, counter: int) -> list[int]:
        x = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *self.key,
             counter & MASK32, (counter >> 32) & MASK32, 0, 0]
        s = list(x)

        def qr(a, b, c, d):
            s[a] = (s[a] + s[b]) & MASK32
            s[d] = _rotl(s[d] ^ s[a], 16)
            s[c] = (s[c] + s[d]) & MASK32
            s[b] = _rotl(s[b] ^ s[c], 12)
            s[a] = (s[a] + s[b]) & MASK32
            s[d] = _rotl(s[d] ^ s[a], 8)
            s[c] = (s[c] + s[d]) & MASK32
            s[b] = _rotl(s[b] ^ s[c], 7)

        for _ in range(self.DOUBLE_ROUNDS):
            qr(0, 4, 8, 12)
            qr(1, 5, 9, 13)
            qr(2, 6, 10, 14)
            qr(3, 7, 11, 15)
            qr(0, 5, 10, 15)
            qr(1, 6, 11, 12)
            qr(2, 7, 8, 13)
            qr(3, 4, 9, 14)
        return [(a + b) & MASK32 for a, b in zip(s, x)]

    def next_u32(self) -> int:
        block, offset = divmod(self.pos, 16)
        if block != self._block_index:
            self._block = self._block_words(block & MASK64)
            self._block_index = block
        self.pos += 1
        return self._block[offset]

    def next_u64(self) -> int:
        lo = self.next_u32()
        return lo | (self.next_u32() << 32)

    def random_range_inclusive(self, high: int) -> int:
        """rand 0.10's `random_range(0..=high)` for usize on a 64-bit target: a u32
        sampler while high fits in 32 bits, else a u64 one (widening multiply, one extra
        draw when the low half says the first is biased)."""
        if high < 0:
            raise ValueError("empty range")
        bits, draw = (32, self.next_u32) if high <= MASK32 else (64, self.next_u64)
        mask = (1 << bits) - 1
        rng = (high + 1) & mask
        if rng == 0:
            return draw()
        m = draw() * rng
        result, lo = m >> bits, m & mask
        if lo > ((-rng) & mask):
            new_hi = (draw() * rng) >> bits
            if lo + new_hi > mask:
                result += 1
        return result


def resolve_asset(p: str | os.PathLike) -> Path:
    """A path as given when it exists (or is absolute); else the same relative path in the
    project folder when that exists; else as given (so errors name it)."""
    p = Path(p)
    if p.exists() or p.is_absolute():
        return p
    project = PROJECT_DIR / p
    return project if project.exists() else p


class DataError(Exception):
    pass


def collect_files(paths) -> list[Path]:
    """Files and folders (their .txt files, sorted) expanded into a list of files."""
    out: list[Path] = []
    for p in paths:
        p = resolve_asset(p)
        if p.is_dir():
            try:
                entries = sorted(os.listdir(p))
            except OSError as e:
                raise DataError(f"cannot read data folder {p}: {e.strerror}") from None
            files = [p / n for n in entries if (p / n).is_file() and Path(n).suffix == ".txt" and n != ".txt"]
            if not files:
                raise DataError(f"data folder {p} holds no .txt files")
            out.extend(files)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"data file {p} does not exist")
    return out


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text (invalid byte at offset {e.start})") from None


def load_tokens(tokenizer, files: list[Path], eos: int) -> array:
    """Each file tokenized as one document (no special tokens added), followed by `eos`;
    int32 ids, 4 bytes a token however large the corpus."""
    texts = [read_text(f) for f in files]
    out = array("i")
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        out.extend(enc.ids)
        out.append(eos)
    return out


class Batcher:
    """Random windows of ctx + 1 tokens, drawn exactly as alignscope's Batcher draws them."""

    def __init__(self, n_tokens: int, ctx: int, seed: int):
        if n_tokens < ctx + 1:
            raise DataError(f"the training data has {n_tokens} tokens, fewer than one window of --ctx {ctx} + 1")
        self.n_tokens = n_tokens
        self.ctx = ctx
        self.rng = ChaCha8(seed)

    def next_starts(self, b: int) -> list[int]:
        """Start offsets of the next `b` windows."""
        max_start = self.n_tokens - self.ctx - 1
        return [self.rng.random_range_inclusive(max_start) for _ in range(b)]

    @property
    def position(self) -> int:
        return self.rng.pos

    @position.setter
    def position(self, pos: int) -> None:
        # The counter is 64 bits of blocks; like rand_chacha, ignore what lies above.
        self.rng.pos = pos % (1 << 68)
