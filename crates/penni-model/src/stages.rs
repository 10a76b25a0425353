//! A PENNI layer's two stages as ordinary ops: what a layer with quantized basis maps
//! computes, for the reference, the ONNX export and runtimes without an integer kernel for it.

use std::collections::BTreeMap;

use crate::error::{ModelError, Result};
use crate::graph::{Conv2d, Node, Op};
use crate::tensor::Tensor;

/// A decomposed conv as the ops of its two stages (see `DecomposedConv2d`): the basis conv
/// (each input channel with each of the d bases: C x d outputs in C groups, channel c * d + j
/// holding m[c, j]), the quantizer of the basis maps when the layer has one, and the
/// combination, a 1x1 conv in the layer's groups whose weight is the coefficient matrix (its
/// (n, c, j) order is already the 1x1 weight's). The nodes are named `<name>.basis`,
/// `<name>.basis_quant` and `<name>`, the maps between them `<output>.basis_maps` and
/// `<output>.basis_maps_quantized`; the last node writes the layer's output.
pub fn split_decomposed(node: &Node) -> Result<Vec<Node>> {
    let Op::DecomposedConv2d(dc) = &node.op else {
        return Err(ModelError::Graph(format!("'{}' is not a decomposed conv", node.name)));
    };
    let c = &dc.conv;
    let d = dc.num_bases;
    let bases = node.param("bases")?;
    let maps = c
        .in_channels
        .checked_mul(d)
        .ok_or_else(|| ModelError::Graph(format!("'{}' is too large", node.name)))?;
    let mut w1 = Vec::with_capacity(maps * bases.data.len() / d.max(1));
    for _ in 0..c.in_channels {
        w1.extend_from_slice(&bases.data);
    }
    let tensor = |shape: Vec<usize>, data: Vec<f32>| Tensor { shape, data };
    let mut stage1_params = BTreeMap::new();
    stage1_params.insert("weight".to_string(), tensor(vec![maps, 1, c.kernel[0], c.kernel[1]], w1));
    let mut nodes = vec![Node {
        name: format!("{}.basis", node.name),
        op: Op::Conv2d(Conv2d {
            out_channels: maps,
            groups: c.in_channels,
            bias: false,
            ..*c
        }),
        inputs: node.inputs.clone(),
        output: format!("{}.basis_maps", node.output),
        params: stage1_params,
    }];
    if let Some(q) = dc.basis_quant {
        nodes.push(Node {
            name: format!("{}.basis_quant", node.name),
            op: Op::Activation(q),
            inputs: vec![nodes[0].output.clone()],
            output: format!("{}.basis_maps_quantized", node.output),
            params: BTreeMap::new(),
        });
    }
    let coef = node.param("coefficients")?;
    let mut stage2_params = BTreeMap::new();
    stage2_params.insert(
        "weight".to_string(),
        tensor(
            vec![c.out_channels, coef.data.len() / c.out_channels.max(1), 1, 1],
            coef.data.clone(),
        ),
    );
    if let Some(b) = node.params.get("bias") {
        stage2_params.insert("bias".to_string(), b.clone());
    }
    nodes.push(Node {
        name: node.name.clone(),
        op: Op::Conv2d(Conv2d {
            in_channels: maps,
            out_channels: c.out_channels,
            kernel: [1, 1],
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: c.groups,
            bias: c.bias,
        }),
        inputs: vec![nodes.last().expect("stage 1").output.clone()],
        output: node.output.clone(),
        params: stage2_params,
    });
    Ok(nodes)
}
