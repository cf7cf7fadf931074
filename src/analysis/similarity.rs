//! Layer-to-layer similarity of residual streams: COS (the paper's per-sample cosine,
//! centered or raw), linear CKA, and the Appendix-B quantities.
//!
//! Features of one layer are an `n x d` matrix (n samples = token positions). Everything is
//! computed in f64 so that the numbers match the reference to ~1e-9.
//!
//! A similarity that is not defined is `None`, never 0 (which would read as "orthogonal"):
//! the cosine of a zero vector, and so centered COS and CKA of a single sample, whose
//! centered features are all zero.

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
