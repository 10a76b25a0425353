//! The one table of ONNX operators the importer reads. Each entry names the operator, the
//! attributes it accepts and its converter (plus, for a few, checks that need only the node
//! itself). `SUPPORTED_OPS`, the static check that lists every unsupported operator and attribute,
//! and the dispatch all read this table, so they cannot drift apart; the README's op table is
//! checked against it by a test below.

use super::{Ctx, Importer, PResult, arith, conv, fold, linear, norm, pool, quant, shape};
use crate::error::OnnxError;
use crate::proto::attribute_type as at;

/// Converts one ONNX node: reads its inputs, then emits IR nodes or records a folded value.
pub(super) type Convert = fn(&mut Importer<'_>, &Ctx<'_>) -> PResult<()>;

/// Checks that need only the node (attribute values, which outputs are read): they run before
/// conversion, so their problems are listed even when an input already failed.
pub(super) type Check = fn(&Importer<'_>, &Ctx<'_>, &mut Vec<String>) -> Result<(), OnnxError>;

pub(super) struct OpDef {
    pub name: &'static str,
    pub attrs: &'static [&'static str],
    pub check: Option<Check>,
    pub convert: Convert,
}

const fn op(name: &'static str, attrs: &'static [&'static str], convert: Convert) -> OpDef {
    OpDef {
        name,
        attrs,
        check: None,
        convert,
    }
}

const fn checked(name: &'static str, attrs: &'static [&'static str], check: Check, convert: Convert) -> OpDef {
    OpDef {
        name,
        attrs,
        check: Some(check),
        convert,
    }
}

const MAXPOOL_ATTRS: &[&str] = &[
    "auto_pad",
    "ceil_mode",
    "dilations",
    "kernel_shape",
    "pads",
    "storage_order",
    "strides",
];
const AVGPOOL_ATTRS: &[&str] = &[
    "auto_pad",
    "ceil_mode",
    "count_include_pad",
    "dilations",
    "kernel_shape",
    "pads",
    "strides",
];
/// Add/Mul/Sub/Div: opset-6 broadcasting (`broadcast`, `axis`) is interpreted.
const LEGACY_BROADCAST: &[&str] = &["broadcast", "axis"];

/// Every operator of the default domain that penni imports, by op family.
pub(super) const OPS: &[OpDef] = &[
    // convolution and padding (conv.rs)
    op(
        "Conv",
        &["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"],
        conv::conv,
    ),
    op("Pad", &["mode", "pads", "value"], conv::pad),
    // normalisation (norm.rs)
    checked(
        "BatchNormalization",
        &["epsilon", "momentum", "spatial", "is_test", "training_mode", "consumed_inputs"],
        norm::check_batch_norm,
        norm::batch_norm,
    ),
    op("Softmax", &["axis"], norm::softmax),
    op("LogSoftmax", &["axis"], norm::log_softmax),
    // pooling (pool.rs)
    checked("MaxPool", MAXPOOL_ATTRS, pool::check_pool, pool::max_pool),
    checked("AveragePool", AVGPOOL_ATTRS, pool::check_pool, pool::average_pool),
    op("GlobalAveragePool", &[], pool::global_average_pool),
    op("ReduceMean", &["axes", "keepdims", "noop_with_empty_axes"], pool::reduce_mean),
    // element-wise arithmetic and activations (arith.rs)
    op("Relu", &[], arith::relu),
    op("Clip", &["min", "max"], arith::clip),
    op("Sigmoid", &[], arith::sigmoid),
    op("HardSigmoid", &["alpha", "beta"], arith::hard_sigmoid),
    op("HardSwish", &[], arith::hard_swish),
    op("LeakyRelu", &["alpha"], arith::leaky_relu),
    op("Add", LEGACY_BROADCAST, arith::add),
    op("Sum", &[], arith::add),
    op("Mul", LEGACY_BROADCAST, arith::mul),
    op("Sub", LEGACY_BROADCAST, arith::sub),
    op("Div", LEGACY_BROADCAST, arith::div),
    // fully connected (linear.rs)
    checked(
        "Gemm",
        &["alpha", "beta", "transA", "transB", "broadcast"],
        linear::check_gemm,
        linear::gemm,
    ),
    op("MatMul", &[], linear::matmul),
    // quantization (quant.rs)
    op(
        "QuantizeLinear",
        &["axis", "saturate", "block_size", "output_dtype"],
        quant::quantize_linear,
    ),
    op("DequantizeLinear", &["axis", "block_size"], quant::dequantize_linear),
    // shapes and layout (shape.rs)
    op("Flatten", &["axis"], shape::flatten),
    op("Reshape", &["allowzero"], shape::reshape),
    op("Transpose", &["perm"], shape::transpose),
    op("Identity", &[], shape::identity),
    checked("Dropout", &["ratio", "is_test", "seed"], shape::check_dropout, shape::dropout),
    op("Shape", &["start", "end"], shape::shape),
    op("Gather", &["axis"], shape::gather),
    op("Unsqueeze", &["axes"], shape::unsqueeze),
    op("Squeeze", &["axes"], shape::squeeze),
    // constants and what folds on them (fold.rs)
    checked(
        "Constant",
        &["value", "value_float", "value_floats", "value_int", "value_ints"],
        fold::check_constant,
        fold::constant,
    ),
    op("ConstantOfShape", &["value"], fold::constant_of_shape),
    op("Concat", &["axis"], fold::concat),
    op("Cast", &["to", "saturate"], fold::cast),
    op("CastLike", &["saturate"], fold::cast_like),
    op("Expand", &[], fold::expand),
];

/// ONNX operators (default domain) that the importer understands: the names in [`OPS`].
pub const SUPPORTED_OPS: &[&str] = &op_names();

const fn op_names() -> [&'static str; OPS.len()] {
    let mut names = [""; OPS.len()];
    let mut i = 0;
    while i < OPS.len() {
        names[i] = OPS[i].name;
        i += 1;
    }
    names
}

pub(super) fn lookup(op_type: &str) -> Option<&'static OpDef> {
    OPS.iter().find(|d| d.name == op_type)
}

/// Everything that can be said about a node before converting it: its domain and operator are
/// known, its attributes are allowed, and its operator's own checks. Problems go to `issues`;
/// the entry to convert with is returned when the operator is known.
pub(super) fn check_static(imp: &Importer, cx: &Ctx, issues: &mut Vec<String>) -> Result<Option<&'static OpDef>, OnnxError> {
    let n = cx.node;
    if !(n.domain.is_empty() || n.domain == "ai.onnx") {
        issues.push(format!("operator {} from domain '{}' is not supported", n.op_type, n.domain));
        return Ok(None);
    }
    let Some(def) = lookup(&n.op_type) else {
        issues.push(format!("operator {} is not supported", n.op_type));
        return Ok(None);
    };
    for a in &n.attribute {
        if !a.ref_attr_name.is_empty() {
            issues.push(format!(
                "attribute '{}' refers to a function attribute, which is not supported",
                a.name
            ));
        } else if matches!(a.r#type, at::GRAPH | at::GRAPHS) {
            issues.push(format!("attribute '{}' holds a subgraph; subgraphs are not supported", a.name));
        } else if !def.attrs.contains(&a.name.as_str()) {
            issues.push(format!("attribute '{}' is not supported for {}", a.name, n.op_type));
        }
    }
    if let Some(check) = def.check {
        check(imp, cx, issues)?;
    }
    Ok(Some(def))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn one_entry_per_operator() {
        let names: BTreeSet<&str> = SUPPORTED_OPS.iter().copied().collect();
        assert_eq!(names.len(), OPS.len(), "an operator is registered twice");
    }

    /// The operators in the first column of the README's import table, e.g. `MaxPool / AveragePool`.
    fn readme_ops() -> BTreeSet<String> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("| ONNX op |")
            .nth(1)
            .expect("the README has an import table starting with '| ONNX op |'");
        table
            .lines()
            .skip(2) // the header's rest and the separator row
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('|').nth(1))
            .flat_map(|cell| cell.split([',', '/']).map(|s| s.trim().to_string()).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    }

    #[test]
    fn readme_op_table_matches_the_registry() {
        let documented = readme_ops();
        let registered: BTreeSet<String> = SUPPORTED_OPS.iter().map(|s| s.to_string()).collect();
        let undocumented: Vec<_> = registered.difference(&documented).collect();
        let unregistered: Vec<_> = documented.difference(&registered).collect();
        assert!(
            undocumented.is_empty() && unregistered.is_empty(),
            "crates/penni-onnx/README.md is out of date: registered but not in its table: {undocumented:?}; in its table but not registered: {unregistered:?}"
        );
    }
}
