//! Vectorisable CPU math for the hot elementwise loops (softmax-cross-entropy, GELU,
//! attention softmax). `exp` is the Cephes single-precision polynomial (relative error
//! ~1e-7), written with plain arithmetic so LLVM vectorises it; each loop is compiled
//! twice, for the baseline target and for AVX2+FMA, and picked at run time.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Adding and subtracting 1.5 * 2^23 rounds to the nearest integer without SSE4.1.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e * scale
}

/// tanh through exp: `1 - 2 / (exp(2x) + 1)`, accurate to ~1e-7 absolute.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * x) + 1.0)
}

macro_rules! dispatch {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident : $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { generic($($arg),*) }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

dispatch! {
    /// Cross-entropy of one row of logits against `target`; when `grad_scale` is non-zero
    /// the row is overwritten with `grad_scale * (softmax - onehot)`.
    pub fn xent_row(row: &mut [f32], target: usize, grad_scale: f32) -> f64 {
        let mut max = f32::NEG_INFINITY;
        for &x in row.iter() {
            max = max.max(x);
        }
        let picked = row[target];
        let mut sum = 0f32;
        if grad_scale != 0.0 {
            for x in row.iter_mut() {
                *x = exp(*x - max);
                sum += *x;
            }
            let k = grad_scale / sum;
            for x in row.iter_mut() {
                *x *= k;
            }
            row[target] -= grad_scale;
        } else {
            for &x in row.iter() {
                sum += exp(x - max);
            }
        }
        (sum as f64).ln() + (max - picked) as f64
    }
}

dispatch! {
    /// In-place softmax of a row.
    pub fn softmax_row(row: &mut [f32]) -> () {
        let mut max = f32::NEG_INFINITY;
        for &x in row.iter() {
            max = max.max(x);
        }
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / pi)

dispatch! {
    /// GPT-2's GELU (tanh approximation).
    pub fn gelu(x: &[f32], y: &mut [f32]) -> () {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + tanh(GELU_C * (x + 0.044715 * x * x * x)));
        }
    }
}

dispatch! {
    /// d GELU: `dx = dy * gelu'(x)`.
    pub fn gelu_backward(x: &[f32], dy: &[f32], dx: &mut [f32]) -> () {
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let t = tanh(GELU_C * (x + 0.044715 * x * x * x));
            let du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
            *d = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_and_tanh_are_accurate() {
        let mut worst: f64 = 0.0;
        let mut worst_t: f64 = 0.0;
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let e = super::exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((e - want) / want).abs());
            if x.abs() < 20.0 {
                worst_t = worst_t.max((super::tanh(x) as f64 - (x as f64).tanh()).abs());
            }
        }
        assert!(worst < 3e-7, "exp relative error {worst:e}");
        assert!(worst_t < 3e-7, "tanh absolute error {worst_t:e}");
    }
}
