"""The trained pipeline (cleaning + TF-IDF + classifier) as one ONNX graph over raw text.

skl2onnx converts the TF-IDF vectoriser and the classifiers; this module adds a converter for
``TextCleaner`` built from standard operators, so the graph takes raw text exactly as the
scikit-learn pipeline does, under both onnxruntime and ``mlflow.pyfunc``:

    text [N, 1] --StringNormalizer(LOWER, locale C)--> Tokenizer(regex: URL | [a-z]{2,})
      --> keep = RegexFullMatch([a-z]{2,}) and not LabelEncoder(stop words)
      --> move kept tokens to the front of each row (TopK over positions, GatherElements)
      --> tokens [N, C], the dropped ones replaced by padding

The padding is no word, so the vectoriser's own tokenizer skips it, and since kept tokens are
contiguous, its n-grams are the scikit-learn n-grams (a stop word or URL between two words
does not split a bigram in scikit-learn either: it was removed before the n-grams were made).
Lower-casing uses the "C" locale, which every system has (onnxruntime's default, en_US.UTF-8,
is missing from slim images) and which maps exactly the ASCII letters that cleaning lower-cases.

The graph's outputs are ``label`` (string [N]) and ``score`` (float [N]: the predicted class's
probability, or its decision-function value for classifiers without probabilities). Both are
one-dimensional, so ``mlflow.pyfunc`` returns them as two DataFrame columns.

Opset 20 (``RegexFullMatch``): onnxruntime 1.17 or later.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recipes.text_classification.cleaning import STOP_WORDS, TOKEN_PATTERN, WORD_PATTERN

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"
TARGET_OPSET = {"": 20, "ai.onnx.ml": 3}
PADDING = "#"

_registered = False


def register_converters() -> None:
    """Teach skl2onnx ``TextCleaner`` (once per process)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter

    from recipes.text_classification.cleaning import TextCleaner

    update_registered_converter(
        TextCleaner, "RetrainerTextCleaner", _cleaner_shape, _convert_cleaner
    )
    _registered = True


def _cleaner_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import StringTensorType

    operator.outputs[0].type = StringTensorType([operator.inputs[0].get_first_dimension(), None])


def _convert_cleaner(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto

    def var(name: str) -> str:
        return str(scope.get_unique_variable_name(name))

    def node(op_type: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        container.add_node(
            op_type, inputs, outputs, name=scope.get_unique_operator_name(op_type), **attrs
        )

    def constant(name: str, proto_type: int, dims: list[int], values: list[Any]) -> str:
        variable = var(name)
        container.add_initializer(variable, proto_type, dims, values)
        return variable

    minus_one = constant("minus_one", TensorProto.INT64, [1], [-1])
    zero = constant("zero", TensorProto.INT64, [], [0])
    one = constant("one", TensorProto.INT64, [], [1])
    axis_one = constant("axis_one", TensorProto.INT64, [1], [1])
    padding = constant("padding", TensorProto.STRING, [], [PADDING.encode()])

    flat, lower, tokens = var("flat"), var("lower"), var("tokens")
    node("Reshape", [operator.inputs[0].full_name, minus_one], [flat])
    node(
        "StringNormalizer",
        [flat],
        [lower],
        op_version=10,
        case_change_action="LOWER",
        is_case_sensitive=0,
        locale="C",
    )
    node(
        "Tokenizer",
        [lower],
        [tokens],
        op_domain="com.microsoft",
        op_version=1,
        mark=0,
        mincharnum=1,
        pad_value=PADDING,
        tokenexp=TOKEN_PATTERN,
    )

    is_word, stop_code, is_stop, not_stop, keep = (
        var("is_word"),
        var("stop_code"),
        var("is_stop"),
        var("not_stop"),
        var("keep"),
    )
    node("RegexFullMatch", [tokens], [is_word], op_version=20, pattern=WORD_PATTERN)
    node(
        "LabelEncoder",
        [tokens],
        [stop_code],
        op_domain="ai.onnx.ml",
        op_version=2,
        keys_strings=list(STOP_WORDS),
        values_int64s=[1] * len(STOP_WORDS),
        default_int64=0,
    )
    node("Equal", [stop_code, one], [is_stop])
    node("Not", [is_stop], [not_stop])
    node("And", [is_word, not_stop], [keep])

    # Sort key per row: a kept token's position, a dropped one's position + C (to the back).
    shape, width, width_scalar, positions, pushed, key = (
        var("shape"),
        var("width"),
        var("width_scalar"),
        var("positions"),
        var("pushed"),
        var("key"),
    )
    node("Shape", [tokens], [shape])
    node("Gather", [shape, axis_one], [width], axis=0)
    node("Squeeze", [width], [width_scalar])
    node("Range", [zero, width_scalar, one], [positions])
    node("Add", [positions, width_scalar], [pushed])
    node("Where", [keep, positions, pushed], [key])
    _, order = var("sorted_key"), var("order")
    node("TopK", [key, width], [_, order], axis=1, largest=0, sorted=1)
    moved, kept_moved = var("moved"), var("kept_moved")
    node("GatherElements", [tokens, order], [moved], axis=1)
    node("GatherElements", [keep, order], [kept_moved], axis=1)
    node("Where", [kept_moved, moved, padding], [operator.outputs[0].full_name])


def to_onnx(pipeline: Any, *, name: str = "text_classifier") -> Any:
    """An ``onnx.ModelProto`` of ``pipeline`` (cleaner, TF-IDF, classifier) over raw text."""
    import onnx
    from onnx import helper
    from skl2onnx import convert_sklearn, get_model_alias
    from skl2onnx.common._registration import get_converter
    from skl2onnx.common.data_types import StringTensorType

    register_converters()
    classifier = pipeline.steps[-1][1]
    allowed = get_converter(get_model_alias(type(classifier))).get_allowed_options() or {}
    # Probabilities as a tensor, not a list of maps. A classifier without that option still
    # needs an explicit option: in a pipeline skl2onnx otherwise asks every classifier for
    # "zipmap" and fails on those that do not know it (LinearSVC).
    options = {id(classifier): {"zipmap": False} if "zipmap" in allowed else {"nocl": False}}
    model = convert_sklearn(
        pipeline,
        name=name,
        initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
        options=options,
    )
    graph = model.graph
    label_out, scores_out = (output.name for output in graph.output)
    # One score per row: the predicted class's (label and argmax agree in skl2onnx's graphs).
    graph.node.append(
        helper.make_node(
            "ReduceMax",
            [scores_out, _axes_initializer(graph)],
            [SCORE_OUTPUT],
            keepdims=0,
            name="score_of_label",
        )
    )
    if label_out != LABEL_OUTPUT:
        graph.node.append(helper.make_node("Identity", [label_out], [LABEL_OUTPUT]))
    label_type = next(o for o in graph.output if o.name == label_out).type.tensor_type.elem_type
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL_OUTPUT, label_type, [None]),
            helper.make_tensor_value_info(SCORE_OUTPUT, onnx.TensorProto.FLOAT, [None]),
        ]
    )
    onnx.checker.check_model(model)
    return model


def _axes_initializer(graph: Any) -> str:
    from onnx import numpy_helper

    name = "score_axes"
    graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), name))
    return name


def set_metadata(model: Any, metadata: dict[str, str]) -> None:
    """``metadata_props`` of the ONNX file (readable by any ONNX tool)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def session(model: Any) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def predict(inference_session: Any, texts: Any) -> np.ndarray:
    """Labels from an onnxruntime session for raw texts (missing values as empty texts)."""
    column = np.array(
        [text if isinstance(text, str) else "" for text in texts], dtype=object
    ).reshape(-1, 1)
    labels: np.ndarray = inference_session.run([LABEL_OUTPUT], {INPUT_NAME: column})[0]
    return labels
