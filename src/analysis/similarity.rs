//! Layer-to-layer similarity of residual streams: COS (the paper's per-sample cosine,
//! centered or raw), linear CKA, and the Appendix-B quantities.
//!
//! Features of one layer are an `n x d` matrix (n samples = token positions). The per-prompt
//! functions compute in f64 so that the numbers match the reference to ~1e-9; the
//! whole-text [`CorpusSimilarity`] runs its per-chunk products as f32 gemms and accumulates
//! in f64.
//!
//! A similarity that is not defined is `None`, never 0 (which would read as "orthogonal"):
//! the cosine of a zero vector, and so centered COS and CKA of a single sample, whose
//! centered features are all zero.

use rayon::prelude::*;

/// Features of one layer: `n` samples of dimension `d`, row-major.
#[derive(Debug, Clone)]
pub struct Features {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f64>,
}

impl Features {
    pub fn new(n: usize, d: usize, data: Vec<f64>) -> Self {
        assert_eq!(data.len(), n * d, "features are n x d");
        Self { n, d, data }
    }

    pub fn from_f32(n: usize, d: usize, data: &[f32]) -> Self {
        Self::new(n, d, data.iter().map(|&x| x as f64).collect())
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    pub fn mean(&self) -> Vec<f64> {
        let mut m = vec![0.0; self.d];
        for i in 0..self.n {
            for (a, b) in m.iter_mut().zip(self.row(i)) {
                *a += b;
            }
        }
        m.iter_mut().for_each(|x| *x /= self.n.max(1) as f64);
        m
    }

    /// The features with each dimension's mean over samples subtracted.
    pub fn centered(&self) -> Self {
        let m = self.mean();
        let mut data = self.data.clone();
        for row in data.chunks_mut(self.d) {
            for (x, mu) in row.iter_mut().zip(&m) {
                *x -= mu;
            }
        }
        Self::new(self.n, self.d, data)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// Cosine of two vectors; `None` where either is zero.
pub fn cosine(a: &[f64], b: &[f64]) -> Option<f64> {
    let den = norm(a) * norm(b);
    (den > 0.0).then(|| dot(a, b) / den)
}

/// Mean of the defined values; `None` when there is none.
pub fn mean_defined(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let (sum, n) = values.into_iter().flatten().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Mean over samples of the cosine between matching rows, over the samples where it is
/// defined; `None` when it is defined for none.
pub fn mean_row_cosine(x: &Features, y: &Features) -> Option<f64> {
    assert_eq!((x.n, x.d), (y.n, y.d));
    mean_defined((0..x.n).map(|i| cosine(x.row(i), y.row(i))))
}

/// Row-normalised copies (`None` for a zero row), so a COS matrix costs one dot per sample
/// and pair.
fn unit_rows(x: &Features) -> Vec<Option<Vec<f64>>> {
    x.data
        .chunks(x.d)
        .map(|row| {
            let n = norm(row);
            (n > 0.0).then(|| row.iter().map(|v| v / n).collect())
        })
        .collect()
}

/// The (L+1)x(L+1) COS matrix: mean per-sample cosine between layers, after subtracting
/// each layer's mean over samples when `centered`. Samples with a zero row in either layer
/// have no cosine and are left out; an entry with none left is `None` (so are all centered
/// entries of a single sample).
pub fn cos_matrix(layers: &[Features], centered: bool) -> Vec<Vec<Option<f64>>> {
    let units: Vec<Vec<Option<Vec<f64>>>> = layers.iter().map(|f| unit_rows(&if centered { f.centered() } else { f.clone() })).collect();
    let k = units.len();
    let mut m = vec![vec![None; k]; k];
    for i in 0..k {
        for j in i..k {
            let v = mean_defined(units[i].iter().zip(&units[j]).map(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => Some(dot(a, b)),
                _ => None,
            }));
            m[i][j] = v;
            m[j][i] = v;
        }
    }
    m
}

/// Gram matrix `X X^T` (n x n) of centered features.
fn gram(x: &Features) -> Vec<f64> {
    let n = x.n;
    let mut g = vec![0.0; n * n];
    for i in 0..n {
        for j in i..n {
            let v = dot(x.row(i), x.row(j));
            g[i * n + j] = v;
            g[j * n + i] = v;
        }
    }
    g
}

/// Linear CKA matrix: `||Xi^T Xj||_F^2 / (||Xi^T Xi||_F ||Xj^T Xj||_F)` on features centered
/// over samples. Uses `||X^T Y||_F^2 = <X X^T, Y Y^T>_F`, so the cost is n^2 d per layer.
/// `None` where a layer's centered features are all zero (a single sample).
pub fn cka_matrix(layers: &[Features]) -> Vec<Vec<Option<f64>>> {
    let grams: Vec<Vec<f64>> = layers.iter().map(|f| gram(&f.centered())).collect();
    let self_norm: Vec<f64> = grams.iter().map(|g| dot(g, g).sqrt()).collect();
    let k = grams.len();
    let mut m = vec![vec![None; k]; k];
    for i in 0..k {
        for j in i..k {
            let den = self_norm[i] * self_norm[j];
            let v = (den > 0.0).then(|| dot(&grams[i], &grams[j]) / den);
            m[i][j] = v;
            m[j][i] = v;
        }
    }
    m
}

/// The paper's Appendix-B view of one residual step `h^{l+1} = h^l + f(h^l)`: for each
/// l in 0..L, the mean over samples of `||h^l|| / ||h^{l+1} - h^l||` and of
/// `cos(h^l, h^{l+1} - h^l)`, over the samples where they are defined (a block that
/// leaves a sample unchanged defines neither for it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResidualSteps {
    pub norm_ratio: Vec<Option<f64>>,
    pub cos_update: Vec<Option<f64>>,
}

pub fn residual_steps(layers: &[Features]) -> ResidualSteps {
    let mut norm_ratio = Vec::new();
    let mut cos_update = Vec::new();
    for w in layers.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let deltas: Vec<Vec<f64>> = (0..a.n).map(|s| b.row(s).iter().zip(a.row(s)).map(|(x, y)| x - y).collect()).collect();
        norm_ratio.push(mean_defined(deltas.iter().enumerate().map(|(s, d)| {
            let dn = norm(d);
            (dn > 0.0).then(|| norm(a.row(s)) / dn)
        })));
        cos_update.push(mean_defined(deltas.iter().enumerate().map(|(s, d)| cosine(a.row(s), d))));
    }
    ResidualSteps { norm_ratio, cos_update }
}

/// COS of adjacent layers, `cos(h^l, h^{l+1})` for l in 0..L (centered or raw).
pub fn adjacent_cos(cos: &[Vec<Option<f64>>]) -> Vec<Option<f64>> {
    (0..cos.len().saturating_sub(1)).map(|l| cos[l][l + 1]).collect()
}

/// Streaming linear CKA between many layers and one reference layer, over more samples
/// than fit in memory: merges per-chunk centered co-moments (Chan's parallel update), so
/// the result equals CKA on all samples centered by the global mean.
#[derive(Debug, Clone)]
pub struct StreamingCka {
    d: usize,
    n: f64,
    /// Per layer: mean, co-moment with itself, co-moment with the reference layer.
    mean: Vec<Vec<f64>>,
    c_self: Vec<Vec<f64>>,
    c_ref: Vec<Vec<f64>>,
    reference: usize,
}

impl StreamingCka {
    pub fn new(layers: usize, d: usize, reference: usize) -> Self {
        Self {
            d,
            n: 0.0,
            mean: vec![vec![0.0; d]; layers],
            c_self: vec![vec![0.0; d * d]; layers],
            c_ref: vec![vec![0.0; d * d]; layers],
            reference,
        }
    }

    /// Adds a chunk: for each layer, its chunk mean and its chunk-centered co-moments
    /// (`Xc^T Xc` and `Xc^T Rc`, d x d row-major), over `n` samples.
    pub fn add_chunk(&mut self, n: usize, means: &[Vec<f64>], c_self: &[Vec<f64>], c_ref: &[Vec<f64>]) {
        let (na, nb) = (self.n, n as f64);
        let nt = na + nb;
        let f = if nt > 0.0 { na * nb / nt } else { 0.0 };
        let r = self.reference;
        let delta: Vec<Vec<f64>> = self.mean.iter().zip(means).map(|(a, b)| b.iter().zip(a).map(|(y, x)| y - x).collect()).collect();
        for l in 0..self.mean.len() {
            let d = self.d;
            for (i, di) in delta[l].iter().enumerate() {
                for j in 0..d {
                    self.c_self[l][i * d + j] += c_self[l][i * d + j] + f * di * delta[l][j];
                    self.c_ref[l][i * d + j] += c_ref[l][i * d + j] + f * di * delta[r][j];
                }
            }
        }
        for (mean, dl) in self.mean.iter_mut().zip(&delta) {
            for (m, di) in mean.iter_mut().zip(dl) {
                *m += di * nb / nt.max(1.0);
            }
        }
        self.n = nt;
    }

    /// CKA of every layer with the reference layer (`None` where a layer's centered
    /// features are all zero).
    pub fn cka(&self) -> Vec<Option<f64>> {
        let fro = |m: &[f64]| dot(m, m).sqrt();
        let rn = fro(&self.c_self[self.reference]);
        (0..self.mean.len())
            .map(|l| {
                let den = fro(&self.c_self[l]) * rn;
                (den > 0.0).then(|| dot(&self.c_ref[l], &self.c_ref[l]) / den)
            })
            .collect()
    }

    pub fn means(&self) -> &[Vec<f64>] {
        &self.mean
    }
}

/// The full `(L+1) x (L+1)` centered COS and linear CKA matrices over more positions than
/// one prompt (a whole text), fed in chunks of per-layer features.
///
/// CKA needs every layer pair's cross-covariance `Xi_c^T Xj_c` (d x d): the layers are laid
/// side by side as one `n x (k d)` matrix per chunk, so one gemm gives every pair's chunk
/// co-moment, and chunks merge exactly with Chan's parallel update (chunk-centered
/// co-moments plus a mean-difference correction). The result equals [`cka_matrix`] on all
/// positions at once. Centered COS needs the global means before any cosine can be taken,
/// so it is a second pass over the same chunks ([`CorpusSimilarity::add_cosines`]) after
/// every chunk went through [`CorpusSimilarity::add_moments`].
#[derive(Debug, Clone)]
pub struct CorpusSimilarity {
    layers: usize,
    d: usize,
    /// Positions seen by the first pass.
    n: f64,
    /// Per layer mean, `layers * d`.
    mean: Vec<f64>,
    /// Centered co-moment of the side-by-side features, `(layers d) x (layers d)`.
    comoment: Vec<f64>,
    /// Second pass: per pair, the sum over positions of the defined centered cosines and
    /// how many there are (a position at a layer's mean has no centered direction).
    cos_sum: Vec<f64>,
    cos_count: Vec<f64>,
    cos_n: usize,
}

impl CorpusSimilarity {
    pub fn new(layers: usize, d: usize) -> Self {
        let w = layers * d;
        Self {
            layers,
            d,
            n: 0.0,
            mean: vec![0.0; w],
            comoment: vec![0.0; w * w],
            cos_sum: vec![0.0; layers * layers],
            cos_count: vec![0.0; layers * layers],
            cos_n: 0,
        }
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Positions seen by the first pass.
    pub fn positions(&self) -> usize {
        self.n as usize
    }

    fn side_by_side(&self, feats: &[candle_core::Tensor]) -> candle_core::Result<candle_core::Tensor> {
        assert_eq!(feats.len(), self.layers, "one feature matrix per layer");
        let x = candle_core::Tensor::cat(feats, 1)?.to_dtype(candle_core::DType::F32)?;
        debug_assert_eq!(x.dim(1)?, self.layers * self.d);
        Ok(x)
    }

    /// First pass: adds one chunk of features, one `[n, d]` tensor per layer.
    pub fn add_moments(&mut self, feats: &[candle_core::Tensor]) -> candle_core::Result<()> {
        let x = self.side_by_side(feats)?;
        let nb = x.dim(0)?;
        if nb == 0 {
            return Ok(());
        }
        let chunk_mean = x.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&chunk_mean)?;
        let c = xc.t()?.contiguous()?.matmul(&xc)?.flatten_all()?.to_vec1::<f32>()?;
        let chunk_mean: Vec<f32> = chunk_mean.flatten_all()?.to_vec1()?;
        let (na, nb) = (self.n, nb as f64);
        let nt = na + nb;
        let f = na * nb / nt;
        let delta: Vec<f64> = chunk_mean.iter().zip(&self.mean).map(|(&b, &a)| b as f64 - a).collect();
        let w = self.layers * self.d;
        self.comoment.par_chunks_mut(w).zip(c.par_chunks(w)).enumerate().for_each(|(i, (row, crow))| {
            let di = f * delta[i];
            for ((m, &cv), &dj) in row.iter_mut().zip(crow).zip(&delta) {
                *m += cv as f64 + di * dj;
            }
        });
        for (m, dl) in self.mean.iter_mut().zip(&delta) {
            *m += dl * nb / nt;
        }
        self.n = nt;
        Ok(())
    }

    /// The global per-layer means of the first pass, as a `[1, layers * d]` row.
    fn mean_row(&self, device: &candle_core::Device) -> candle_core::Result<candle_core::Tensor> {
        let m: Vec<f32> = self.mean.iter().map(|&x| x as f32).collect();
        candle_core::Tensor::from_vec(m, (1, self.layers * self.d), device)
    }

    /// Second pass: adds the centered cosines of one chunk (the same chunks as the first
    /// pass, in any order). A zero row has no cosine (as in [`cosine`]) and is left out of
    /// its pairs' means.
    pub fn add_cosines(&mut self, feats: &[candle_core::Tensor]) -> candle_core::Result<()> {
        let x = self.side_by_side(feats)?;
        let n = x.dim(0)?;
        if n == 0 {
            return Ok(());
        }
        let (k, d) = (self.layers, self.d);
        let xc = x.broadcast_sub(&self.mean_row(x.device())?)?.reshape((n, k, d))?;
        let norms = xc.sqr()?.sum_keepdim(2)?.sqrt()?; // [n, k, 1]
        // Rows of norm 0 stay 0 after the division: they add 0 to the sums, and the mask
        // keeps them out of the counts.
        let unit = xc.broadcast_div(&norms.maximum(1e-30)?)?;
        let gram = unit.matmul(&unit.t()?.contiguous()?)?; // [n, k, k]
        let sums: Vec<f32> = gram.sum(0)?.flatten_all()?.to_vec1()?;
        let defined = norms.gt(0.0)?.to_dtype(candle_core::DType::F32)?.squeeze(2)?; // [n, k]
        let counts: Vec<f32> = defined.t()?.contiguous()?.matmul(&defined)?.flatten_all()?.to_vec1()?;
        for ((s, c), (v, m)) in self.cos_sum.iter_mut().zip(self.cos_count.iter_mut()).zip(sums.into_iter().zip(counts)) {
            *s += v as f64;
            *c += m as f64;
        }
        self.cos_n += n;
        Ok(())
    }

    /// Linear CKA of every layer pair over all positions of the first pass; `None` where a
    /// layer's centered features are all zero (a single position).
    pub fn cka(&self) -> Vec<Vec<Option<f64>>> {
        let (k, d) = (self.layers, self.d);
        let w = k * d;
        // ||C_ij||_F^2 for every block of the co-moment.
        let mut fro2 = vec![0.0f64; k * k];
        for bi in 0..k {
            for bj in bi..k {
                let mut s = 0.0;
                for r in 0..d {
                    let row = &self.comoment[(bi * d + r) * w + bj * d..(bi * d + r) * w + (bj + 1) * d];
                    s += dot(row, row);
                }
                fro2[bi * k + bj] = s;
                fro2[bj * k + bi] = s;
            }
        }
        (0..k)
            .map(|i| {
                (0..k)
                    .map(|j| {
                        let den = (fro2[i * k + i] * fro2[j * k + j]).sqrt();
                        (den > 0.0).then(|| fro2[i * k + j] / den)
                    })
                    .collect()
            })
            .collect()
    }

    /// Centered COS of every layer pair: the mean over the positions of the second pass
    /// where both layers' centered features are non-zero; `None` where there is none.
    pub fn cos(&self) -> Vec<Vec<Option<f64>>> {
        let k = self.layers;
        (0..k)
            .map(|i| {
                (0..k)
                    .map(|j| {
                        let c = self.cos_count[i * k + j];
                        (c > 0.0).then(|| self.cos_sum[i * k + j] / c)
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether the second pass saw as many positions as the first.
    pub fn complete(&self) -> bool {
        self.cos_n as f64 == self.n
    }
}

/// Pearson correlation of two equally long samples; `None` when it is undefined (fewer
/// than two points, or a constant sample).
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return None;
    }
    let mx = x.iter().sum::<f64>() / n as f64;
    let my = y.iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    let den = (sxx * syy).sqrt();
    if den == 0.0 { None } else { Some(sxy / den) }
}

/// The off-diagonal entries `(i, j)`, `i < j`, of a symmetric matrix, in row order.
pub fn upper_triangle<T: Copy>(m: &[Vec<T>]) -> Vec<T> {
    (0..m.len()).flat_map(|i| (i + 1..m.len()).map(move |j| m[i][j])).collect()
}

/// The pairs `(x, y)` of two equally shaped matrices' off-diagonal entries where both are
/// defined (for COS-vs-CKA agreement).
pub fn defined_pairs(x: &[Vec<Option<f64>>], y: &[Vec<Option<f64>>]) -> Vec<(f64, f64)> {
    upper_triangle(x).into_iter().zip(upper_triangle(y)).filter_map(|(a, b)| Some((a?, b?))).collect()
}
