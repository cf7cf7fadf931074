//! Tensor operations shared by inference and training.

use candle_core::{Result, Tensor, D};

/// Layer norm from basic ops, so that autograd reaches x, weight and bias (candle's
/// fused `layer_norm` has no backward pass).
pub fn layer_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

/// `x @ w + b` for `x: [n, in]`, `w: [in, out]`, `b: [out]`.
pub fn matmul_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(w)?.broadcast_add(b)
}

/// `x @ w^T` for `x: [n, d]`, `w: [v, d]` (the classifier against the embedding matrix).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.matmul(&w.t()?)
}
