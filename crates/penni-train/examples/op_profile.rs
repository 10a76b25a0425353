//! Times the ops of a ResNet-20 training step one by one on burn's flex backend, forward and
//! backward, at the shapes of experiments/train-bench (batch 128, 1x28x28 Fashion-MNIST).
//! `cargo run --release -p penni-train --example op_profile`

use std::time::Instant;

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

type Conv = fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

fn bn(x: Tensor<4>, gamma: Tensor<4>, beta: Tensor<4>) -> Tensor<4> {
    let mean = x.clone().mean_dim(0).mean_dim(2).mean_dim(3);
    let centered = x.clone() - mean.clone();
    let var = (centered.clone() * centered).mean_dim(0).mean_dim(2).mean_dim(3);
    let xhat = (x - mean) / (var + 1e-5).sqrt();
    xhat * gamma + beta
}

fn main() {
    kernel_only();
    let dev = Device::flex();
    let n = 128;
    for &(m, n, k) in &[
        (16, 784, 144),
        (16, 144, 784),
        (144, 784, 16),
        (32, 196, 288),
        (288, 196, 32),
        (64, 49, 576),
        (576, 49, 64),
    ] {
        println!(
            "gemm m{m} n{n} k{k}: {:.1} GMAC/s (A row-major), {:.1} (A col-major)",
            gemm_rate(m, n, k, true),
            gemm_rate(m, n, k, false)
        );
    }
    println!("op, shape, forward ms, forward+backward ms");
    for &(c, hw, stride) in &[(16usize, 28usize, 1usize), (32, 14, 1), (64, 7, 1), (16, 28, 2)] {
        let cout = if stride == 2 { c * 2 } else { c };
        let x = Tensor::<4>::random([n, c, hw, hw], Distribution::Normal(0.0, 1.0), &dev);
        let w = Tensor::<4>::random([cout, c, 3, 3], Distribution::Normal(0.0, 0.1), &dev);
        let opts = ConvOptions::new([stride, stride], [1, 1], [1, 1], 1);
        let xa = x.clone().autodiff().require_grad();
        let wa = w.clone().autodiff().require_grad();
        let convs: [(&str, Conv); 2] = [("burn", burn::tensor::module::conv2d), ("penni", penni_train::ops::conv2d)];
        for (who, conv) in convs {
            let fwd = time(5, || {
                let y = conv(x.clone(), w.clone(), None, opts.clone());
                let _ = y.into_data();
            });
            let both = time(5, || {
                let y = conv(xa.clone(), wa.clone(), None, opts.clone());
                let g = y.sum().backward();
                let _ = wa.grad(&g).map(|t| t.into_data());
                let _ = xa.grad(&g).map(|t| t.into_data());
            });
            let ho = hw / stride;
            let gmac = (n * cout * c * 9 * ho * ho) as f64 / 1e9;
            println!(
                "{who} conv3x3 {c}->{cout} s{stride}, {n}x{c}x{hw}x{hw}, {fwd:.1} ({:.1} GMAC/s), {both:.1} (bwd {:.1} GMAC/s)",
                gmac / fwd * 1e3,
                2.0 * gmac / (both - fwd) * 1e3
            );
        }
        let ga = Tensor::<1>::ones([c], &dev).autodiff().require_grad();
        let ba = Tensor::<1>::zeros([c], &dev).autodiff().require_grad();
        let both = time(5, || {
            let (y, _, _) = penni_train::ops::batch_norm_train(xa.clone(), ga.clone(), ba.clone(), 1e-5);
            let gr = y.sum().backward();
            let _ = ga.grad(&gr).map(|t| t.into_data());
            let _ = xa.grad(&gr).map(|t| t.into_data());
        });
        println!("penni batchnorm, {n}x{c}x{hw}x{hw}, -, {both:.1}");

        let g = Tensor::<4>::ones([1, c, 1, 1], &dev);
        let b = Tensor::<4>::zeros([1, c, 1, 1], &dev);
        let fwd = time(5, || {
            let _ = bn(x.clone(), g.clone(), b.clone()).into_data();
        });
        let ga = g.clone().autodiff().require_grad();
        let ba = b.clone().autodiff().require_grad();
        let both = time(5, || {
            let y = bn(xa.clone(), ga.clone(), ba.clone());
            let gr = y.sum().backward();
            let _ = ga.grad(&gr).map(|t| t.into_data());
            let _ = xa.grad(&gr).map(|t| t.into_data());
        });
        println!("batchnorm (composed), {n}x{c}x{hw}x{hw}, {fwd:.1}, {both:.1}");
        let fwd = time(5, || {
            let _ = burn::tensor::activation::relu(x.clone()).into_data();
        });
        let both = time(5, || {
            let y = burn::tensor::activation::relu(xa.clone());
            let gr = y.sum().backward();
            let _ = xa.grad(&gr).map(|t| t.into_data());
        });
        println!("relu, {n}x{c}x{hw}x{hw}, {fwd:.1}, {both:.1}");
        let fwd = time(5, || {
            let _ = (x.clone() + x.clone()).into_data();
        });
        println!("add, {n}x{c}x{hw}x{hw}, {fwd:.1}, -");
    }
}

#[allow(dead_code)]
fn gemm_rate(m: usize, n: usize, k: usize, a_rs: bool) -> f64 {
    use penni_train::kernels::gemm::{Mat, matmul};
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let reps = 200;
    let t = Instant::now();
    for _ in 0..reps {
        let av = if a_rs { Mat::row_major(&a, k) } else { Mat::col_major(&a, m) };
        matmul(Mat::rows(&mut c, n), false, av, Mat::row_major(&b, n), m, n, k);
    }
    (m * n * k * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

#[allow(dead_code)]
fn kernel_only() {
    use penni_train::kernels::conv::{ConvGeom, conv2d_backward, conv2d_forward};
    for &(c, hw) in &[(16usize, 28usize), (32, 14), (64, 7)] {
        let g = ConvGeom {
            batch: 128,
            in_channels: c,
            in_hw: [hw, hw],
            out_channels: c,
            kernel: [3, 3],
            stride: [1, 1],
            pad_begin: [1, 1],
            dilation: [1, 1],
            groups: 1,
            out_hw: [hw, hw],
        };
        let x = vec![0.5f32; g.input_len()];
        let w = vec![0.1f32; g.weight_len()];
        let dy = vec![0.2f32; g.output_len()];
        let f = time(5, || {
            let _ = conv2d_forward(&g, &x, &w, None);
        });
        let b = time(5, || {
            let _ = conv2d_backward(&g, &x, &w, &dy, true, false);
        });
        let bw = time(5, || {
            let _ = conv2d_backward(&g, &x, &w, &dy, false, false);
        });
        println!("kernel only {c}ch {hw}x{hw}: forward {f:.1} ms, backward {b:.1} ms (dw only {bw:.1})");
    }
}
