//! penni IR -> ONNX. Dense layers map one to one onto standard operators; a PENNI layer becomes
//! the two-stage computation it stands for (basis conv with group = C, then a 1x1 conv with the
//! coefficients), so any ONNX runtime executes it, and a metadata entry lets `import` rebuild
//! the PENNI layer exactly. Quantized models are written in the standard QDQ form: the weights
//! of layers that read a quantized activation, when they lie on an integer grid, as int8
//! initializers behind a DequantizeLinear (per output channel), biases
//! on the grid of input scale x weight scale as int32, and each quantized activation as a
//! QuantizeLinear -> DequantizeLinear pair, which onnxruntime runs with its integer kernels.

use std::collections::HashSet;
use std::path::Path;

use penni_model::{Activation, Model, Node, Op, Shape, grid, stages};
use prost::Message;

use crate::error::OnnxError;
use crate::import::DECOMPOSED_KEY;
use crate::proto::*;
use crate::tensor::{encode_f32, encode_i64, encode_int};

/// The operator set written: opset 13 is run by every onnxruntime of the last years.
pub const EXPORT_OPSET: i64 = 13;
/// IR version 7 is the one that goes with opset 13.
pub const EXPORT_IR_VERSION: i64 = 7;

/// Serialises a model to ONNX bytes.
pub fn export_bytes(model: &Model) -> Result<Vec<u8>, OnnxError> {
    let proto = export_proto(model)?;
    if proto.encoded_len() > i32::MAX as usize {
        return Err(OnnxError::Export {
            model: model.name.clone(),
            message: format!(
                "the model needs {} bytes; ONNX files without external data are limited to 2 GiB",
                proto.encoded_len()
            ),
        });
    }
    Ok(proto.encode_to_vec())
}

/// Writes a `.onnx` file atomically (temporary file + rename).
pub fn export_file(model: &Model, path: &Path) -> Result<(), OnnxError> {
    let bytes = export_bytes(model)?;
    penni_model::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// Unique names in one namespace: a generated name never collides with one the model uses.
struct Names(HashSet<String>);

impl Names {
    fn fresh(&mut self, base: String) -> String {
        let mut s = base.clone();
        let mut k = 1;
        while self.0.contains(&s) {
            k += 1;
            s = format!("{base}.{k}");
        }
        self.0.insert(s.clone());
        s
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INT,
        i: v,
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::INTS,
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attribute_type::FLOAT,
        f: v,
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: Vec<String>, output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs,
        output: vec![output.into()],
        attribute,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[usize]) -> ValueInfoProto {
    let mut dim = vec![Dimension {
        dim_param: Some("N".into()),
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        dim_value: Some(d as i64),
        ..Default::default()
    }));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto { dim }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[allow(clippy::too_many_arguments)]
fn conv_attrs(kernel: [usize; 2], stride: [usize; 2], padding: [usize; 4], dilation: [usize; 2], groups: usize) -> Vec<AttributeProto> {
    vec![
        attr_ints("kernel_shape", &kernel),
        attr_ints("strides", &stride),
        attr_ints("pads", &padding),
        attr_ints("dilations", &dilation),
        attr_int("group", groups as i64),
    ]
}

/// Builds the ModelProto (exposed so tools can add metadata before writing).
pub fn export_proto(model: &Model) -> Result<ModelProto, OnnxError> {
    let shapes = model.validate()?;
    let mut tensors = Names(
        std::iter::once(model.input.name.clone())
            .chain(model.nodes.iter().map(|n| n.output.clone()))
            .collect(),
    );
    let mut node_names = Names(model.nodes.iter().map(|n| n.name.clone()).collect());
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    // constants that are not parameters of a node (Pad's pads)
    let mut consts = Vec::new();
    let mut meta = Vec::new();
    let mut param = |tensors: &mut Names, n: &Node, p: &str, dims: &[usize], data: &[f32]| -> String {
        let name = tensors.fresh(format!("{}.{p}", n.name));
        inits.push(encode_f32(&name, dims, data));
        name
    };
    // quantized activations: tensor -> the scale an integer layer reading it would use
    let input_scale = model.activation_scales();
    // (integer weights, their DequantizeLinear nodes) written beside the f32 parameters
    let mut qinits: Vec<TensorProto> = Vec::new();
    let mut dq_nodes: Vec<NodeProto> = Vec::new();
    for n in &model.nodes {
        let x = n.inputs.first().cloned().unwrap_or_default();
        match &n.op {
            Op::Conv2d(c) => {
                let w = n.param("weight")?;
                let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                let quantized_input = input_scale.contains_key(x.as_str());
                let (wname, wscales) = match q.weight(n, "weight", &w.shape, &w.data, c.out_channels, quantized_input) {
                    Some(v) => v,
                    None => (param(&mut tensors, n, "weight", &w.shape, &w.data), vec![]),
                };
                let mut ins = vec![x.clone(), wname];
                if let Some(b) = n.params.get("bias") {
                    let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                    let bname = q.bias(n, &b.data, input_scale.get(x.as_str()).copied(), &wscales);
                    ins.push(bname.unwrap_or_else(|| param(&mut tensors, n, "bias", &b.shape, &b.data)));
                }
                nodes.push(node(
                    "Conv",
                    &n.name,
                    ins,
                    &n.output,
                    conv_attrs(c.kernel, c.stride, c.padding, c.dilation, c.groups),
                ));
            }
            Op::DecomposedConv2d(c) => {
                // the two stages as the IR defines them: the basis conv (each input channel with
                // each basis), the basis maps' quantizer if any, the 1x1 combination
                let parts = stages::split_decomposed(n)?;
                let (basis, combine) = (&parts[0], &parts[parts.len() - 1]);
                let w1 = basis.param("weight")?;
                let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                let w1_name = match q.weight(n, "bases", &w1.shape, &w1.data, w1.shape[0], input_scale.contains_key(x.as_str())) {
                    Some((name, _)) => name,
                    None => param(&mut tensors, n, "bases", &w1.shape, &w1.data),
                };
                let mid = tensors.fresh(basis.output.clone());
                let stage1 = node_names.fresh(basis.name.clone());
                nodes.push(node(
                    "Conv",
                    &stage1,
                    vec![x, w1_name],
                    &mid,
                    conv_attrs(c.conv.kernel, c.conv.stride, c.conv.padding, c.conv.dilation, c.conv.in_channels),
                ));
                let (maps, maps_scale) = match c.basis_quant {
                    Some(grid @ Activation::QuantizeDequantize { scale, .. }) => {
                        let quantized = tensors.fresh(parts[1].output.clone());
                        let qname = node_names.fresh(parts[1].name.clone());
                        let mut out = Emitted {
                            tensors: &mut tensors,
                            node_names: &mut node_names,
                            inits: &mut qinits,
                            nodes: &mut nodes,
                        };
                        out.quantize_dequantize(&model.name, &qname, mid, &quantized, grid)?;
                        (quantized, Some(scale))
                    }
                    _ => (mid, None),
                };
                // quantized basis maps: the coefficients and the bias as an integer 1x1 conv takes
                // them; f32 maps keep them f32
                let w2 = combine.param("weight")?;
                let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                let (w2_name, w2_scales) = match q.weight(n, "coefficients", &w2.shape, &w2.data, c.conv.out_channels, maps_scale.is_some())
                {
                    Some(v) => v,
                    None => (param(&mut tensors, n, "coefficients", &w2.shape, &w2.data), vec![]),
                };
                let mut ins = vec![maps, w2_name];
                if let Some(b) = n.params.get("bias") {
                    let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                    let bname = q.bias(n, &b.data, maps_scale, &w2_scales);
                    ins.push(bname.unwrap_or_else(|| param(&mut tensors, n, "bias", &b.shape, &b.data)));
                }
                nodes.push(node(
                    "Conv",
                    &n.name,
                    ins,
                    &n.output,
                    conv_attrs([1, 1], [1, 1], [0; 4], [1, 1], c.conv.groups),
                ));
                meta.push(StringStringEntryProto {
                    key: format!("{DECOMPOSED_KEY}{}", n.name),
                    value: stage1,
                });
            }
            Op::BatchNorm2d { eps, .. } => {
                let mut ins = vec![x];
                for p in ["weight", "bias", "running_mean", "running_var"] {
                    let t = n.param(p)?;
                    ins.push(param(&mut tensors, n, p, &t.shape, &t.data));
                }
                nodes.push(node(
                    "BatchNormalization",
                    &n.name,
                    ins,
                    &n.output,
                    vec![attr_float("epsilon", *eps)],
                ));
            }
            Op::Relu => nodes.push(node("Relu", &n.name, vec![x], &n.output, vec![])),
            Op::Clip { min, max } => {
                let lo = param(&mut tensors, n, "min", &[], &[*min]);
                let hi = param(&mut tensors, n, "max", &[], &[*max]);
                nodes.push(node("Clip", &n.name, vec![x, lo, hi], &n.output, vec![]));
            }
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let mut attrs = vec![
                    attr_ints("kernel_shape", &p.kernel),
                    attr_ints("strides", &p.stride),
                    attr_ints("pads", &p.padding),
                    attr_int("ceil_mode", p.ceil_mode as i64),
                ];
                let op = if let Op::AvgPool2d(_) = n.op {
                    attrs.push(attr_int("count_include_pad", p.count_include_pad as i64));
                    "AveragePool"
                } else {
                    "MaxPool"
                };
                nodes.push(node(op, &n.name, vec![x], &n.output, attrs));
            }
            Op::GlobalAvgPool => nodes.push(node("GlobalAveragePool", &n.name, vec![x], &n.output, vec![])),
            // ONNX Add is binary; Sum takes any number of inputs and re-imports as one Add.
            Op::Add => {
                let op = if n.inputs.len() == 2 { "Add" } else { "Sum" };
                nodes.push(node(op, &n.name, n.inputs.clone(), &n.output, vec![]));
            }
            Op::Activation(a) => match *a {
                Activation::Sigmoid => nodes.push(node("Sigmoid", &n.name, vec![x], &n.output, vec![])),
                Activation::HardSigmoid { alpha, beta } => nodes.push(node(
                    "HardSigmoid",
                    &n.name,
                    vec![x],
                    &n.output,
                    vec![attr_float("alpha", alpha), attr_float("beta", beta)],
                )),
                Activation::LeakyRelu { alpha } => {
                    nodes.push(node("LeakyRelu", &n.name, vec![x], &n.output, vec![attr_float("alpha", alpha)]))
                }
                // HardSwish arrives in opset 14: x * HardSigmoid(x) with its alpha and beta,
                // which the importer fuses back into one HardSwish
                Activation::HardSwish => {
                    let gate = tensors.fresh(format!("{}.gate", n.output));
                    let gate_node = node_names.fresh(format!("{}.gate", n.name));
                    nodes.push(node(
                        "HardSigmoid",
                        &gate_node,
                        vec![x.clone()],
                        &gate,
                        vec![attr_float("alpha", 1.0 / 6.0), attr_float("beta", 0.5)],
                    ));
                    nodes.push(node("Mul", &n.name, vec![x, gate], &n.output, vec![]));
                }
                q @ Activation::QuantizeDequantize { .. } => {
                    let mut out = Emitted {
                        tensors: &mut tensors,
                        node_names: &mut node_names,
                        inits: &mut qinits,
                        nodes: &mut nodes,
                    };
                    out.quantize_dequantize(&model.name, &n.name, x, &n.output, q)?
                }
            },
            Op::Mul => nodes.push(node("Mul", &n.name, n.inputs.clone(), &n.output, vec![])),
            Op::Concat => nodes.push(node("Concat", &n.name, n.inputs.clone(), &n.output, vec![attr_int("axis", 1)])),
            // opset 13 Softmax normalises along one axis: 1 is the channels (or the features).
            Op::Softmax { log } => nodes.push(node(
                if *log { "LogSoftmax" } else { "Softmax" },
                &n.name,
                vec![x],
                &n.output,
                vec![attr_int("axis", 1)],
            )),
            Op::Pad { pads } => {
                // opset 13: the pads are an input, [x1_begin, x2_begin, ..., x1_end, ...] over N, C, H, W
                let name = tensors.fresh(format!("{}.pads", n.name));
                let p = pads.map(|v| v as i64);
                consts.push(encode_i64(&name, &[8], &[0, 0, p[0], p[1], 0, 0, p[2], p[3]]));
                nodes.push(node("Pad", &n.name, vec![x, name], &n.output, vec![]));
            }
            Op::Flatten => nodes.push(node("Flatten", &n.name, vec![x], &n.output, vec![attr_int("axis", 1)])),
            Op::Linear { out_features, .. } => {
                let w = n.param("weight")?;
                let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                let quantized_input = input_scale.contains_key(x.as_str());
                let (wname, wscales) = match q.weight(n, "weight", &w.shape, &w.data, *out_features, quantized_input) {
                    Some(v) => v,
                    None => (param(&mut tensors, n, "weight", &w.shape, &w.data), vec![]),
                };
                let mut ins = vec![x.clone(), wname];
                if let Some(b) = n.params.get("bias") {
                    let mut q = Quantized::new(&mut tensors, &mut node_names, &mut qinits, &mut dq_nodes);
                    let bname = q.bias(n, &b.data, input_scale.get(x.as_str()).copied(), &wscales);
                    ins.push(bname.unwrap_or_else(|| param(&mut tensors, n, "bias", &b.shape, &b.data)));
                }
                nodes.push(node("Gemm", &n.name, ins, &n.output, vec![attr_int("transB", 1)]));
            }
        }
    }
    let out_dims = match shapes[&model.output] {
        Shape::Map { c, h, w } => vec![c, h, w],
        Shape::Vector(f) => vec![f],
    };
    let graph = GraphProto {
        name: model.name.clone(),
        // the weights' DequantizeLinear nodes read only initializers: first is topological
        node: dq_nodes.into_iter().chain(nodes).collect(),
        initializer: inits.into_iter().chain(qinits).chain(consts).collect(),
        input: vec![value_info(
            &model.input.name,
            &[model.input.channels, model.input.height, model.input.width],
        )],
        output: vec![value_info(&model.output, &out_dims)],
        ..Default::default()
    };
    Ok(ModelProto {
        ir_version: EXPORT_IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: EXPORT_OPSET,
        }],
        producer_name: "penni".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Exported by penni. PENNI layers are written as a basis conv (group = C) followed by a 1x1 coefficient conv.".into(),
        graph: Some(graph),
        metadata_props: meta,
        ..Default::default()
    })
}

/// Writes quantized parameters: integer initializers and the DequantizeLinear nodes that read
/// them, with names from the export's namespaces.
/// Where the export writes: fresh names, initializers and nodes.
struct Emitted<'a> {
    tensors: &'a mut Names,
    node_names: &'a mut Names,
    inits: &'a mut Vec<TensorProto>,
    nodes: &'a mut Vec<NodeProto>,
}

impl Emitted<'_> {
    /// A per-tensor `Activation::QuantizeDequantize` named `name` from `x` to `output`:
    /// QuantizeLinear -> DequantizeLinear, and a Clip where its range is narrower than the
    /// 8-bit integers of opset 13.
    fn quantize_dequantize(&mut self, model: &str, name: &str, x: String, output: &str, q: Activation) -> Result<(), OnnxError> {
        let Activation::QuantizeDequantize {
            scale,
            zero_point,
            qmin,
            qmax,
        } = q
        else {
            return Err(OnnxError::Export {
                model: model.into(),
                message: format!("node '{name}': {} is not a quantizer", q.name()),
            });
        };
        let (ty, lo, hi) = if qmin >= 0 && qmax <= 255 {
            (data_type::UINT8, 0, 255)
        } else if qmin >= -128 && qmax <= 127 {
            (data_type::INT8, -128, 127)
        } else {
            return Err(OnnxError::Export {
                model: model.into(),
                message: format!("node '{name}' quantizes to [{qmin}, {qmax}], wider than the 8-bit integers of ONNX opset {EXPORT_OPSET}"),
            });
        };
        let s_name = self.tensors.fresh(format!("{name}.scale"));
        self.inits.push(encode_f32(&s_name, &[], &[scale]));
        let z_name = self.tensors.fresh(format!("{name}.zero_point"));
        self.inits.push(encode_int(&z_name, &[], ty, &[zero_point as i64]));
        let ints = self.tensors.fresh(format!("{output}.integers"));
        let q_node = self.node_names.fresh(format!("{name}.quantize"));
        self.nodes.push(node(
            "QuantizeLinear",
            &q_node,
            vec![x, s_name.clone(), z_name.clone()],
            &ints,
            vec![],
        ));
        if (qmin, qmax) == (lo, hi) {
            self.nodes
                .push(node("DequantizeLinear", name, vec![ints, s_name, z_name], output, vec![]));
        } else {
            let deq = self.tensors.fresh(format!("{output}.dequantized"));
            let dq_node = self.node_names.fresh(format!("{name}.dequantize"));
            self.nodes
                .push(node("DequantizeLinear", &dq_node, vec![ints, s_name, z_name], &deq, vec![]));
            let f = |k: i32| (k - zero_point) as f32 * scale;
            let lo = self.tensors.fresh(format!("{name}.min"));
            self.inits.push(encode_f32(&lo, &[], &[f(qmin)]));
            let hi = self.tensors.fresh(format!("{name}.max"));
            self.inits.push(encode_f32(&hi, &[], &[f(qmax)]));
            self.nodes.push(node("Clip", name, vec![deq, lo, hi], output, vec![]));
        }
        Ok(())
    }
}

struct Quantized<'a> {
    tensors: &'a mut Names,
    node_names: &'a mut Names,
    inits: &'a mut Vec<TensorProto>,
    nodes: &'a mut Vec<NodeProto>,
}

impl<'a> Quantized<'a> {
    fn new(tensors: &'a mut Names, node_names: &'a mut Names, inits: &'a mut Vec<TensorProto>, nodes: &'a mut Vec<NodeProto>) -> Self {
        Quantized {
            tensors,
            node_names,
            inits,
            nodes,
        }
    }

    /// `DequantizeLinear(integers, scales, zeros, axis 0)` of `ty` integers; returns its output.
    fn dequantize(&mut self, n: &Node, p: &str, dims: &[usize], ty: i32, ints: Vec<i64>, scales: &[f32]) -> String {
        let base = format!("{}.{p}", n.name);
        let q = self.tensors.fresh(format!("{base}.integers"));
        let s = self.tensors.fresh(format!("{base}.scale"));
        let z = self.tensors.fresh(format!("{base}.zero_point"));
        let out = self.tensors.fresh(base.clone());
        self.inits.push(encode_int(&q, dims, ty, &ints));
        self.inits.push(encode_f32(&s, &[scales.len()], scales));
        self.inits.push(encode_int(&z, &[scales.len()], ty, &vec![0; scales.len()]));
        let name = self.node_names.fresh(format!("{base}.dequantize"));
        self.nodes
            .push(node("DequantizeLinear", &name, vec![q, s, z], &out, vec![attr_int("axis", 0)]));
        out
    }

    /// A weight on an integer grid per output channel (`channels` runs) as int8 behind a
    /// DequantizeLinear, when its layer reads a quantized activation (`quantized_input`: an
    /// integer kernel's operands; elsewhere, and for weights that merely happen to lie on a grid,
    /// such as one value per channel, f32 stays): its name and channel scales.
    fn weight(
        &mut self,
        n: &Node,
        p: &str,
        dims: &[usize],
        data: &[f32],
        channels: usize,
        quantized_input: bool,
    ) -> Option<(String, Vec<f32>)> {
        if !quantized_input {
            return None;
        }
        let (scales, ints) = grid::int8_channels(data, channels)?;
        let name = self.dequantize(n, p, dims, data_type::INT8, ints.into_iter().map(i64::from).collect(), &scales);
        Some((name, scales))
    }

    /// A bias on the int32 grid of its layer's quantized input and int8 weight (the form
    /// onnxruntime's integer convolutions take); None when any of the three is not quantized.
    fn bias(&mut self, n: &Node, data: &[f32], input_scale: Option<f32>, weight_scales: &[f32]) -> Option<String> {
        if weight_scales.len() != data.len() {
            return None;
        }
        let scales = grid::bias_scales(input_scale?, weight_scales);
        let ints = grid::int32_bias(data, &scales)?;
        Some(self.dequantize(
            n,
            "bias",
            &[data.len()],
            data_type::INT32,
            ints.into_iter().map(i64::from).collect(),
            &scales,
        ))
    }
}
