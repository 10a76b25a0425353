//! penni's conv2d and batchnorm ops on burn's flex backend against burn's own ops: same outputs
//! and the same gradients for every input, through the autodiff graph.

use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use penni_train::ops;

fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, what: &str) {
    let a = a.into_data().try_to_vec::<f32>().expect("f32");
    let b = b.into_data().try_to_vec::<f32>().expect("f32");
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= 1e-4 * scale, "{what}[{i}]: penni {x} vs burn {y}");
    }
}

#[test]
fn conv2d_matches_burn_forward_and_backward() {
    let dev = Device::flex();
    // (batch, cin, h, w, cout, k, stride, padding (top, bottom), (left, right), dilation, groups, bias)
    let cases = [
        (2, 3, 9, 8, 4, [3, 3], [1, 1], [(1, 1), (1, 1)], [1, 1], 1, true),
        (3, 4, 10, 10, 6, [3, 3], [2, 2], [(1, 1), (1, 1)], [1, 1], 2, false),
        (2, 8, 5, 5, 4, [1, 1], [1, 1], [(0, 0), (0, 0)], [1, 1], 1, false),
        (2, 4, 8, 7, 4, [1, 1], [2, 2], [(0, 0), (0, 0)], [1, 1], 1, true),
        (1, 4, 9, 9, 8, [3, 3], [1, 1], [(2, 0), (1, 2)], [2, 1], 4, true),
        (9, 2, 6, 6, 3, [5, 3], [1, 2], [(2, 2), (1, 1)], [1, 1], 1, false),
    ];
    for (n, cin, h, w, cout, k, stride, padding, dilation, groups, has_bias) in cases {
        let x = Tensor::<4>::random([n, cin, h, w], Distribution::Normal(0.0, 1.0), &dev);
        let wt = Tensor::<4>::random([cout, cin / groups, k[0], k[1]], Distribution::Normal(0.0, 0.5), &dev);
        let b = Tensor::<1>::random([cout], Distribution::Normal(0.0, 0.5), &dev);
        let opts = ConvOptions::new_with_padding(stride, padding, dilation, groups);
        let run = |conv: fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>| {
            let xa = x.clone().autodiff().require_grad();
            let wa = wt.clone().autodiff().require_grad();
            let ba = b.clone().autodiff().require_grad();
            let y = conv(xa.clone(), wa.clone(), has_bias.then(|| ba.clone()), opts.clone());
            // a loss whose gradient differs per output element
            let weights = y.clone().inner().sin().autodiff();
            let g = (y.clone() * weights).sum().backward();
            let bias_grad = has_bias.then(|| ba.grad(&g).expect("bias grad"));
            (y.inner(), xa.grad(&g).expect("x grad"), wa.grad(&g).expect("w grad"), bias_grad)
        };
        let (yp, dxp, dwp, dbp) = run(ops::conv2d);
        let (yb, dxb, dwb, dbb) = run(burn::tensor::module::conv2d);
        let what = format!("n{n} c{cin} {h}x{w} -> {cout} k{k:?} s{stride:?} p{padding:?} d{dilation:?} g{groups}");
        close(yp, yb, &format!("{what} output"));
        close(dxp, dxb, &format!("{what} dx"));
        close(dwp, dwb, &format!("{what} dw"));
        if let (Some(p), Some(b)) = (dbp, dbb) {
            close(p, b, &format!("{what} dbias"));
        }
    }
}

#[test]
fn batch_norm_train_matches_burn_forward_and_backward() {
    let dev = Device::flex();
    for (n, c, h, w) in [(4, 3, 5, 5), (2, 16, 7, 3), (1, 2, 1, 1)] {
        let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.5, 2.0), &dev);
        let gamma = Tensor::<1>::random([c], Distribution::Normal(1.0, 0.3), &dev);
        let beta = Tensor::<1>::random([c], Distribution::Normal(0.0, 0.3), &dev);
        type Bn = fn(Tensor<4>, Tensor<1>, Tensor<1>, f64) -> (Tensor<4>, Tensor<1>, Tensor<1>);
        let burn_bn: Bn = |x, g, b, eps| {
            let r = burn::tensor::module::batch_norm_train(x, g, b, eps);
            (r.output, r.mean, r.variance)
        };
        let run = |bn: Bn| {
            let xa = x.clone().autodiff().require_grad();
            let ga = gamma.clone().autodiff().require_grad();
            let ba = beta.clone().autodiff().require_grad();
            let (y, mean, var) = bn(xa.clone(), ga.clone(), ba.clone(), 1e-5);
            let weights = x.clone().cos().autodiff();
            let g = (y.clone() * weights).sum().backward();
            (
                y.inner(),
                mean.inner(),
                var.inner(),
                xa.grad(&g).expect("x"),
                ga.grad(&g).expect("gamma"),
                ba.grad(&g).expect("beta"),
            )
        };
        let p = run(ops::batch_norm_train);
        let b = run(burn_bn);
        let what = format!("bn {n}x{c}x{h}x{w}");
        close(p.0, b.0, &format!("{what} output"));
        close(p.1, b.1, &format!("{what} mean"));
        close(p.2, b.2, &format!("{what} variance"));
        close(p.3, b.3, &format!("{what} dx"));
        close(p.4, b.4, &format!("{what} dgamma"));
        close(p.5, b.5, &format!("{what} dbeta"));
    }
}
