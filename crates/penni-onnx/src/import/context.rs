//! What every converter uses: the importer's accessors for a node's inputs (as run-time
//! activations, constants or shape values), its attributes, and `emit`, which adds an IR node
//! with the shape the IR's own rules give it.

use std::collections::BTreeMap;
use std::rc::Rc;

use penni_model::graph::node_output_shape;
use penni_model::{ModelError, Node, Op, Shape, Tensor};

use super::{BATCH_DEPENDENT, Ctx, Dim, Importer, MAX_FOLDED_TOTAL, MAX_FOLDED_VALUES, PResult, Problem, Value, unsupported};
use crate::error::{Issue, OnnxError};
use crate::proto::{AttributeProto, attribute_type as at};
use crate::tensor::{Const, decode};

impl Importer<'_> {
    pub(super) fn malformed(&self, message: impl Into<String>) -> OnnxError {
        OnnxError::Malformed {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    pub(super) fn graph_issue(&mut self, message: impl Into<String>) {
        self.issues.push(Issue {
            node: String::new(),
            op: String::new(),
            message: message.into(),
        });
    }

    pub(super) fn invalid(&self, cx: &Ctx, message: impl Into<String>) -> Problem {
        Problem::Fatal(OnnxError::InvalidNode {
            name: self.name.clone(),
            node: cx.label.clone(),
            op: cx.op.clone(),
            message: message.into(),
        })
    }

    pub(super) fn fresh_tensor(&mut self, base: &str) -> String {
        let mut s = base.to_string();
        let mut k = 1;
        while self.all_names.contains(&s) {
            k += 1;
            s = format!("{base}.{k}");
        }
        self.all_names.insert(s.clone());
        s
    }

    pub(super) fn fresh_node_name(&mut self, base: &str) -> String {
        let mut s = base.to_string();
        let mut k = 1;
        while self.node_names.contains(&s) {
            k += 1;
            s = format!("{base}_{k}");
        }
        self.node_names.insert(s.clone());
        s
    }

    /// The value of an ONNX name; initializers are decoded on first use.
    pub(super) fn value(&mut self, name: &str) -> PResult<Value> {
        if let Some(v) = self.values.get(name) {
            return Ok(v.clone());
        }
        if let Some(t) = self.inits.get(name) {
            let c = decode(t).map_err(|message| OnnxError::Tensor {
                name: self.name.clone(),
                tensor: name.to_string(),
                message,
            })?;
            let v = Value::Const(Rc::new(c));
            self.values.insert(name.to_string(), v.clone());
            return Ok(v);
        }
        Err(Problem::Fatal(
            self.malformed(format!("value '{name}' is used before it is computed")),
        ))
    }

    pub(super) fn input_name<'a>(&self, cx: &'a Ctx, i: usize) -> Option<&'a str> {
        cx.node.input.get(i).map(|s| s.as_str()).filter(|s| !s.is_empty())
    }

    /// Input `i` as a run-time activation.
    pub(super) fn act(&mut self, cx: &Ctx, i: usize) -> PResult<(String, Shape, Option<usize>)> {
        let Some(name) = self.input_name(cx, i) else {
            return Err(self.invalid(cx, format!("input #{i} is missing")));
        };
        match self.value(name)? {
            Value::Act { tensor, shape, producer } => Ok((tensor, shape, producer)),
            Value::Const(_) => unsupported(format!(
                "input '{name}' is a constant; penni needs a run-time tensor computed from the image here"
            )),
            Value::Dims { .. } => unsupported(format!(
                "input '{name}' is a shape (computed by a Shape node); penni needs a run-time tensor computed from the image here"
            )),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    /// Input `i` as a constant (weights, shapes, bounds).
    pub(super) fn constant(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<Option<Rc<Const>>> {
        let Some(name) = self.input_name(cx, i) else {
            return Ok(None);
        };
        match self.value(name)? {
            Value::Const(c) => Ok(Some(c)),
            Value::Act { .. } => unsupported(format!(
                "its {what} '{name}' is computed at run time; penni needs it to be a constant (an initializer or a Constant node; export with constant folding)"
            )),
            Value::Dims { .. } => unsupported(format!("its {what} '{name}' {BATCH_DEPENDENT}")),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    pub(super) fn required_constant(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<Rc<Const>> {
        match self.constant(cx, i, what)? {
            Some(c) => Ok(c),
            None => Err(self.invalid(cx, format!("the {what} (input #{i}) is missing"))),
        }
    }

    /// Input `i` as an int64 scalar or vector whose elements are known or the run-time batch
    /// size (shapes, Reshape targets); the bool says whether it is a scalar.
    pub(super) fn int_values(&mut self, cx: &Ctx, i: usize, what: &str) -> PResult<(bool, Vec<Dim>)> {
        let Some(name) = self.input_name(cx, i) else {
            return Err(self.invalid(cx, format!("the {what} (input #{i}) is missing")));
        };
        match self.value(name)? {
            Value::Dims { scalar, dims } => Ok((scalar, dims)),
            Value::Const(c) => {
                let Some(v) = c.i64s() else {
                    return Err(self.invalid(cx, format!("the {what} must be an integer tensor")));
                };
                if c.dims.len() > 1 {
                    return Err(self.invalid(cx, format!("the {what} has shape {:?}; it must be a scalar or a vector", c.dims)));
                }
                Ok((c.dims.is_empty(), v.iter().map(|&x| Dim::Known(x)).collect()))
            }
            Value::Act { .. } => unsupported(format!(
                "its {what} '{name}' is computed at run time; penni needs it to be a constant (an initializer or a Constant node; export with constant folding)"
            )),
            Value::Poisoned => unsupported("input comes from an unsupported node"),
        }
    }

    /// Integer list from an attribute (older opsets) or from constant input `i` (newer ones),
    /// as Unsqueeze, Squeeze and ReduceMean moved their `axes`; `None` when absent.
    pub(super) fn axes(&mut self, cx: &Ctx, attr_until: i64, i: usize) -> PResult<Option<Vec<i64>>> {
        if self.opset < attr_until {
            return Ok(attr_ints(self, cx, "axes")?);
        }
        match self.constant(cx, i, "axes")? {
            None => Ok(None),
            Some(c) => match c.i64s() {
                Some(v) if c.dims.len() <= 1 => Ok(Some(v.to_vec())),
                _ => Err(self.invalid(cx, "axes must be a 1-D integer tensor")),
            },
        }
    }

    pub(super) fn float_const(&self, cx: &Ctx, c: &Const, what: &str) -> PResult<Vec<f32>> {
        if !c.is_float() {
            return Err(self.invalid(cx, format!("the {what} is an integer tensor; expected floats")));
        }
        Ok(c.f32s())
    }

    pub(super) fn set_output(&mut self, cx: &Ctx, v: Value) {
        if let Some(o) = cx.node.output.first().filter(|o| !o.is_empty()) {
            self.values.insert(o.clone(), v);
        }
    }

    /// Adds an IR node that writes the node's first ONNX output. `fusable` records the node as
    /// the producer of its output, so that a constant Add after a Conv/Gemm/MatMul can fold into
    /// its bias.
    pub(super) fn emit(&mut self, cx: &Ctx, op: Op, inputs: Vec<String>, params: BTreeMap<String, Tensor>, fusable: bool) -> PResult<()> {
        let Some(output) = cx.node.output.first().filter(|o| !o.is_empty()).cloned() else {
            return Err(self.invalid(cx, "the node has no output"));
        };
        self.emit_to(cx, op, inputs, params, fusable, output)
    }

    /// Adds an IR node that writes `output` (an ONNX value name or a fresh tensor name).
    pub(super) fn emit_to(
        &mut self,
        cx: &Ctx,
        op: Op,
        inputs: Vec<String>,
        params: BTreeMap<String, Tensor>,
        fusable: bool,
        output: String,
    ) -> PResult<()> {
        let name = self.fresh_node_name(&cx.label);
        let node = Node {
            name,
            op,
            inputs,
            output: output.clone(),
            params,
        };
        let shape = self.ir_shape(cx, &node)?;
        let idx = self.nodes.len();
        self.ir_index_of.insert(cx.label.clone(), idx);
        self.onnx_label.insert(node.name.clone(), cx.label.clone());
        self.nodes.push(node);
        self.ir_shapes.insert(output.clone(), shape);
        self.values.insert(
            output.clone(),
            Value::Act {
                tensor: output,
                shape,
                producer: fusable.then_some(idx),
            },
        );
        Ok(())
    }

    /// The output shape of an IR node about to be emitted, by the IR's own shape rules (the ones
    /// `Model::validate` applies at the end), so that later nodes see the shape penni will run.
    pub(super) fn ir_shape(&self, cx: &Ctx, node: &Node) -> PResult<Shape> {
        let shapes: Vec<Shape> = node
            .inputs
            .iter()
            .map(|i| self.shape_of(i))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.invalid(cx, "internal: input shape unknown"))?;
        node_output_shape(node, &shapes).map_err(|e| match e {
            ModelError::Shape { message, .. } => self.invalid(cx, message),
            other => self.invalid(cx, other.to_string()),
        })
    }

    pub(super) fn shape_of(&self, tensor: &str) -> Option<Shape> {
        self.ir_shapes.get(tensor).copied()
    }

    pub(super) fn uses_of(&self, cx: &Ctx, output: usize) -> usize {
        cx.node
            .output
            .get(output)
            .filter(|o| !o.is_empty())
            .map_or(0, |o| self.uses.get(o.as_str()).copied().unwrap_or(0))
    }

    pub(super) fn value_of_input(&mut self, cx: &Ctx, i: usize) -> PResult<Value> {
        match self.input_name(cx, i) {
            Some(n) => self.value(n),
            None => Err(self.invalid(cx, format!("input #{i} is missing"))),
        }
    }

    /// Counts `numel` folded values against the limits, so that a small file cannot make
    /// penni build huge constants (repeated Concat doubles a tensor each time).
    pub(super) fn fold_budget(&mut self, cx: &Ctx, numel: Option<usize>) -> PResult<()> {
        match numel {
            Some(n)
                if n <= MAX_FOLDED_VALUES
                    && self.folded_total.saturating_add(n) <= MAX_FOLDED_TOTAL =>
            {
                self.folded_total += n;
                Ok(())
            }
            _ => Err(self.invalid(cx, format!("would create a constant of {} values; penni creates at most {MAX_FOLDED_VALUES} per tensor and {MAX_FOLDED_TOTAL} in total", numel.map_or("too many".to_string(), |n| n.to_string())))),
        }
    }

    /// An axis in [-rank, rank-1] as an index, or an InvalidNode error.
    pub(super) fn axis_index(&self, cx: &Ctx, axis: i64, rank: usize, what: &str) -> PResult<usize> {
        let r = rank as i64;
        if (-r..r).contains(&axis) {
            Ok((if axis < 0 { axis + r } else { axis }) as usize)
        } else {
            Err(self.invalid(cx, format!("{what} {axis} is out of range for rank {rank}")))
        }
    }

    /// Distinct axes in [-rank, rank-1], as sorted indices.
    pub(super) fn axis_set(&self, cx: &Ctx, axes: &[i64], rank: usize) -> PResult<Vec<usize>> {
        let mut out = Vec::with_capacity(axes.len());
        for &a in axes {
            let i = self.axis_index(cx, a, rank, "axis")?;
            if out.contains(&i) {
                return Err(self.invalid(cx, format!("axes {axes:?} name axis {i} twice")));
            }
            out.push(i);
        }
        out.sort_unstable();
        Ok(out)
    }
}

fn attr<'a>(cx: &'a Ctx, name: &str) -> Option<&'a AttributeProto> {
    cx.node.attribute.iter().find(|a| a.name == name)
}

fn wrong_type(imp: &Importer, cx: &Ctx, name: &str, want: &str) -> OnnxError {
    OnnxError::InvalidNode {
        name: imp.name.clone(),
        node: cx.label.clone(),
        op: cx.op.clone(),
        message: format!("attribute '{name}' must be {want}"),
    }
}

pub(super) fn attr_int(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<i64>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::INT || a.r#type == at::UNDEFINED => Ok(Some(a.i)),
        Some(_) => Err(wrong_type(imp, cx, name, "an integer")),
    }
}

pub(super) fn attr_ints(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::INTS || a.r#type == at::UNDEFINED => Ok(Some(a.ints.clone())),
        Some(_) => Err(wrong_type(imp, cx, name, "a list of integers")),
    }
}

pub(super) fn attr_float(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<f32>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::FLOAT || a.r#type == at::UNDEFINED => Ok(Some(a.f)),
        Some(_) => Err(wrong_type(imp, cx, name, "a float")),
    }
}

pub(super) fn attr_string(imp: &Importer, cx: &Ctx, name: &str) -> Result<Option<String>, OnnxError> {
    match attr(cx, name) {
        None => Ok(None),
        Some(a) if a.r#type == at::STRING || a.r#type == at::UNDEFINED => Ok(Some(String::from_utf8_lossy(&a.s).into_owned())),
        Some(_) => Err(wrong_type(imp, cx, name, "a string")),
    }
}
