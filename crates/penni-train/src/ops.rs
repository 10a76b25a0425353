//! The differentiable ops that dominate a CNN training step (convolution and batchnorm with batch
//! statistics), run by penni's own kernels ([`crate::kernels`]) on burn's flex CPU backend and by
//! burn's ops on every other backend. burn-flex has no conv backward of its own (burn's generic
//! one, through transposed convs, ran at 6 GMAC/s here) and builds batchnorm from about ten
//! tensor ops; these are one node each in the autodiff graph with a hand-written backward.
//!
//! The glue is burn 0.22's backend-extension mechanism: [`TrainKernels`] is implemented for
//! `Flex` (forward) and for `Autodiff<Flex>` (forward + a registered backward step).

use burn::backend::Dispatch;
use burn::backend::TensorMetadata;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DispatchDevice, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use crate::kernels::{batchnorm, conv};

/// penni's training kernels as a burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait TrainKernels: Backend {
    /// conv2d without bias (the bias is a broadcast add outside).
    fn penni_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self>;
    /// Batchnorm with batch statistics: (output, mean, biased variance); mean and variance
    /// are not differentiated.
    fn penni_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The f32 values of a flex tensor, contiguous.
fn values(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(t.to_contiguous().as_slice::<f32>().expect("contiguous f32").to_vec()),
    }
}

fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

fn geometry(x: &FlexTensor, w: &FlexTensor, o: &ConvOptions<2>) -> conv::ConvGeom {
    let xs = x.shape();
    let ws = w.shape();
    let out = |i: usize| (xs[2 + i] + o.padding[i].0 + o.padding[i].1 - o.dilation[i] * (ws[2 + i] - 1) - 1) / o.stride[i] + 1;
    conv::ConvGeom {
        batch: xs[0],
        in_channels: xs[1],
        in_hw: [xs[2], xs[3]],
        out_channels: ws[0],
        kernel: [ws[2], ws[3]],
        stride: o.stride,
        pad_begin: [o.padding[0].0, o.padding[1].0],
        dilation: o.dilation,
        groups: o.groups,
        out_hw: [out(0), out(1)],
    }
}

fn is_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

fn flex_conv2d(x: &FlexTensor, w: &FlexTensor, o: &ConvOptions<2>) -> FlexTensor {
    let g = geometry(x, w, o);
    let y = conv::conv2d_forward(&g, &values(x), &values(w), None);
    flex(y, vec![g.batch, g.out_channels, g.out_hw[0], g.out_hw[1]])
}

fn flex_batch_norm(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, eps: f64) -> (FlexTensor, FlexTensor, FlexTensor) {
    let s = x.shape();
    let (n, c) = (s[0], s[1]);
    let f = batchnorm::forward(&values(x), n, c, &values(gamma), &values(beta), eps);
    (flex(f.y, s.to_vec()), flex(f.mean, vec![c]), flex(f.var, vec![c]))
}

impl TrainKernels for Flex {
    fn penni_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        if !is_f32(&[&x, &weight]) {
            return <Flex as burn::backend::ops::ModuleOps<Flex>>::conv2d(x, weight, None, options);
        }
        flex_conv2d(&x, &weight, &options)
    }

    fn penni_batch_norm_train(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> (FlexTensor, FlexTensor, FlexTensor) {
        if !is_f32(&[&x, &gamma, &beta]) {
            let r = <Flex as burn::backend::ops::ModuleOps<Flex>>::batch_norm_train(x, gamma, beta, epsilon);
            return (r.output, r.mean, r.variance);
        }
        flex_batch_norm(&x, &gamma, &beta, epsilon)
    }
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, options) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let w: FlexTensor = checkpointer.retrieve_node_output(w_state);
        let g = geometry(&x, &w, &options);
        let r = conv::conv2d_backward(&g, &values(&x), &values(&w), &values(&dy), node_x.is_some(), false);
        if let (Some(node), Some(dx)) = (node_x, r.dx) {
            grads.register::<Flex>(node.id, flex(dx, x.shape().to_vec()));
        }
        if let Some(node) = node_w {
            grads.register::<Flex>(node.id, flex(r.dw, w.shape().to_vec()));
        }
    }
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = (NodeId, NodeId, FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, gamma_state, mean, var, eps) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x_state);
        let gamma: FlexTensor = checkpointer.retrieve_node_output(gamma_state);
        let s = x.shape();
        let r = batchnorm::backward(
            &values(&x),
            s[0],
            s[1],
            &values(&gamma),
            &values(&mean),
            &values(&var),
            eps,
            &values(&dy),
        );
        let c = s[1];
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(r.dx, s.to_vec()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(r.dgamma, vec![c]));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(r.dbeta, vec![c]));
        }
    }
}

impl<C: CheckpointStrategy> TrainKernels for Autodiff<Flex, C> {
    fn penni_conv2d(x: FloatTensor<Self>, weight: FloatTensor<Self>, options: ConvOptions<2>) -> FloatTensor<Self> {
        if !is_f32(&[x.primitive(), weight.primitive()]) {
            return <Self as burn::backend::ops::ModuleOps<Self>>::conv2d(x, weight, None, options);
        }
        match ConvBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                let ws = prep.checkpoint(&weight);
                let y = flex_conv2d(x.primitive(), weight.primitive(), &options);
                prep.finish((xs, ws, options), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(flex_conv2d(x.primitive(), weight.primitive(), &options)),
        }
    }

    fn penni_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if !is_f32(&[x.primitive(), gamma.primitive(), beta.primitive()]) {
            let r = <Self as burn::backend::ops::ModuleOps<Self>>::batch_norm_train(x, gamma, beta, epsilon);
            return (r.output, r.mean, r.variance);
        }
        let (y, mean, var) = flex_batch_norm(x.primitive(), gamma.primitive(), beta.primitive(), epsilon);
        let y = match BatchNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                let gs = prep.checkpoint(&gamma);
                prep.finish((xs, gs, mean.clone(), var.clone(), epsilon), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        (y, FloatTensor::<Self>::new(mean), FloatTensor::<Self>::new(var))
    }
}

/// Whether a tensor lives on the flex backend (with or without autodiff).
fn on_flex<const D: usize>(t: &Tensor<D>) -> bool {
    matches!(t.device().as_dispatch().clone().inner(), DispatchDevice::Flex(_))
}

/// conv2d with an optional bias; penni's kernels on flex, burn's elsewhere.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, options: ConvOptions<2>) -> Tensor<4> {
    if !on_flex(&x) {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    let cout = weight.dims()[0];
    let y = Tensor::<4>::from_dispatch(<Dispatch as TrainKernels>::penni_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    match bias {
        Some(b) => y + b.reshape([1, cout, 1, 1]),
        None => y,
    }
}

/// Batchnorm with the batch's statistics: (output, mean, biased variance), the statistics
/// detached.
pub fn batch_norm_train(x: Tensor<4>, gamma: Tensor<1>, beta: Tensor<1>, epsilon: f64) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    if !on_flex(&x) {
        let r = burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
        return (r.output, r.mean, r.variance);
    }
    let (y, m, v) =
        <Dispatch as TrainKernels>::penni_batch_norm_train(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), epsilon);
    (Tensor::from_dispatch(y), Tensor::from_dispatch(m), Tensor::from_dispatch(v))
}
