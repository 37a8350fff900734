"""The trained pipeline (cleaning + TF-IDF + classifier) as one ONNX graph over raw text.

skl2onnx converts the classifiers; this module converts the text steps itself, from standard
ONNX operators, so the graph takes raw text exactly as the scikit-learn pipeline does, under
both onnxruntime and ``mlflow.pyfunc``.

**Cleaning** (``TextCleaner``)::

    text [N, 1] --StringNormalizer(LOWER, locale C)--> Tokenizer(regex: URL | [a-z]{2,})
      --> keep = RegexFullMatch([a-z]{2,}) and not LabelEncoder(stop words)
      --> kept tokens moved to the front of each row (TopK over positions, GatherElements)

Its output is the tokens of each row, kept ones first and in order, then the dropped ones (stop
words, URLs, padding). No n-gram of the vocabulary contains a dropped token (the vectoriser was
fitted on cleaned text), so the tail never matches, and since the kept tokens are contiguous,
the n-grams are scikit-learn's (a stop word between two words does not split a bigram there
either: it was removed before the n-grams were made). Lower-casing uses the "C" locale, which
every system has (onnxruntime's default, en_US.UTF-8, is missing from slim images) and which
maps exactly the ASCII letters that cleaning lower-cases.

**TF-IDF and a linear classifier, in token space** (``TextScores``). For the linear models
(ridge, logistic regression, linear SVC, SGD, passive-aggressive, perceptron, multinomial,
complement and Bernoulli naive Bayes) the classifier only needs ``x @ W``, where ``x`` is the
row's TF-IDF vector. A dense ``[N, vocabulary]`` matrix would cost time in proportion to the
vocabulary, so the graph computes ``x @ W`` from the tokens instead: each n-gram's column
(``LabelEncoder``), its count in the row (pairwise ``Equal``), its TF-IDF value (with
scikit-learn's sublinear ``1 + log tf``, idf and l2/l1 norm) and the sum of the weight rows it
selects (``Gather``, ``MatMul``). The classifier itself is then converted by skl2onnx as an
equivalent one whose weight matrix is the identity (same intercepts, classes and probability
function), so labels and scores are skl2onnx's.

**Dense TF-IDF** (the trees): the ``TfIdfVectorizer`` operator counts the n-grams of the
cleaned tokens, then ``1 + log tf`` (skl2onnx's own converter computes ``log(1 + tf)``), idf
and the norm; skl2onnx converts the trees.

The graph's outputs are ``label`` (string [N]) and ``score`` (float [N]: the predicted class's
probability, or its decision-function value for classifiers without probabilities). Both are
one-dimensional, so ``mlflow.pyfunc`` returns them as two DataFrame columns.

Opset 20 (``RegexFullMatch``, ``StringConcat``): onnxruntime 1.17 or later.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model._base import LinearClassifierMixin
from sklearn.naive_bayes import BernoulliNB, ComplementNB, MultinomialNB
from sklearn.pipeline import Pipeline

from recipes.text_classification.cleaning import (
    STOP_WORDS,
    TOKEN_PATTERN,
    WORD_PATTERN,
    TextCleaner,
)

INPUT_NAME = "text"
LABEL_OUTPUT = "label"
SCORE_OUTPUT = "score"
TARGET_OPSET = {"": 20, "ai.onnx.ml": 3}
PADDING = "#"
# Below this a row's norm is zero: scikit-learn leaves such a row (no known word) all zeros.
_TINY = 1e-12

_registered = False


class TextScores(TransformerMixin, BaseEstimator):
    """Cleaned texts -> ``x @ weights``, ``x`` the fitted ``vectorizer``'s TF-IDF rows (or,
    ``binary``, whether each term occurs). Used only to convert a pipeline to ONNX."""

    def __init__(self, vectorizer: TfidfVectorizer, weights: np.ndarray, binary: bool = False):
        self.vectorizer = vectorizer
        self.weights = weights
        self.binary = binary

    def fit(self, X: Any, y: Any = None) -> TextScores:
        return self

    def transform(self, X: Any) -> np.ndarray:
        features = self.vectorizer.transform(X)
        if self.binary:
            features = (features > 0).astype(np.float64)
        return np.asarray(features @ self.weights)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = False
        return tags


def conversion_pipeline(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` in the form converted to ONNX: for a linear classifier, the TF-IDF and the
    classifier's weights fused into ``TextScores`` plus an identity-weight copy of the
    classifier; otherwise ``pipeline`` itself. Predicts what ``pipeline`` predicts."""
    vectorizer, classifier = pipeline.named_steps["tfidf"], pipeline.steps[-1][1]
    fused = _fuse(classifier)
    if fused is None:
        return pipeline
    weights, binary, surrogate = fused
    return Pipeline(
        [
            ("clean", TextCleaner()),
            ("scores", TextScores(vectorizer, weights, binary)),
            ("clf", surrogate),
        ]
    )


def _fuse(classifier: Any) -> tuple[np.ndarray, bool, Any] | None:
    """(weights [vocabulary, k], binary, classifier taking ``x @ weights``) or None."""
    if isinstance(classifier, LinearClassifierMixin):
        weights = np.atleast_2d(np.asarray(classifier.coef_, dtype=np.float64)).T
        surrogate = copy.copy(classifier)
        surrogate.coef_ = np.eye(weights.shape[1])
    elif isinstance(classifier, MultinomialNB | ComplementNB):
        weights = classifier.feature_log_prob_.T
        surrogate = copy.copy(classifier)
        surrogate.feature_log_prob_ = np.eye(weights.shape[1])
    elif isinstance(classifier, BernoulliNB) and classifier.binarize == 0.0:
        # jll = presence @ (log p - log(1 - p)).T + prior + sum(log(1 - p)): a multinomial NB
        # over the presence scores, with the constant folded into its prior.
        absent = np.log1p(-np.exp(classifier.feature_log_prob_))
        weights = (classifier.feature_log_prob_ - absent).T
        surrogate = MultinomialNB()
        surrogate.classes_ = classifier.classes_
        surrogate.class_count_ = classifier.class_count_
        surrogate.class_log_prior_ = classifier.class_log_prior_ + absent.sum(axis=1)
        surrogate.feature_log_prob_ = np.eye(weights.shape[1])
        surrogate.feature_count_ = np.eye(weights.shape[1])
        return weights, True, _with_inputs(surrogate, weights.shape[1])
    else:
        return None
    return weights, False, _with_inputs(surrogate, weights.shape[1])


def _with_inputs(surrogate: Any, n_features: int) -> Any:
    surrogate.n_features_in_ = n_features
    if hasattr(surrogate, "feature_names_in_"):
        del surrogate.feature_names_in_
    return surrogate


def register_converters() -> None:
    """Teach skl2onnx ``TextCleaner`` and ``TextScores`` (once per process)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter

    update_registered_converter(
        TextCleaner, "RetrainerTextCleaner", _tokens_shape, _convert_cleaner
    )
    update_registered_converter(TextScores, "RetrainerTextScores", _scores_shape, _convert_scores)
    _registered = True


def to_onnx(pipeline: Pipeline, *, name: str = "text_classifier") -> Any:
    """An ``onnx.ModelProto`` of ``pipeline`` (cleaner, TF-IDF, classifier) over raw text."""
    import onnx
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn, get_model_alias
    from skl2onnx.common._registration import get_converter
    from skl2onnx.common.data_types import StringTensorType

    register_converters()
    converted = conversion_pipeline(pipeline)
    classifier = converted.steps[-1][1]
    allowed = get_converter(get_model_alias(type(classifier))).get_allowed_options() or {}
    # Probabilities as a tensor, not a list of maps. A classifier without that option still
    # needs an explicit option: in a pipeline skl2onnx otherwise asks every classifier for
    # "zipmap" and fails on those that do not know it (LinearSVC).
    options = {id(classifier): {"zipmap": False} if "zipmap" in allowed else {"nocl": False}}
    model = convert_sklearn(
        converted,
        name=name,
        initial_types=[(INPUT_NAME, StringTensorType([None, 1]))],
        target_opset=TARGET_OPSET,
        options=options,
        # Intermediate names apart from the outputs' (skl2onnx names some "score").
        naming="tc_",
        custom_shape_calculators={TfidfVectorizer: _dense_shape},
        custom_conversion_functions={TfidfVectorizer: _convert_dense_tfidf},
    )
    graph = model.graph
    label_out, scores_out = (output.name for output in graph.output)
    label_type = graph.output[0].type.tensor_type.elem_type
    # One score per row: the predicted class's (label and argmax agree in skl2onnx's graphs).
    graph.initializer.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "score_axes"))
    graph.node.append(
        helper.make_node(
            "ReduceMax", [scores_out, "score_axes"], [SCORE_OUTPUT], keepdims=0, name="score"
        )
    )
    if label_out != LABEL_OUTPUT:
        graph.node.append(helper.make_node("Identity", [label_out], [LABEL_OUTPUT]))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(LABEL_OUTPUT, label_type, [None]),
            helper.make_tensor_value_info(SCORE_OUTPUT, onnx.TensorProto.FLOAT, [None]),
        ]
    )
    onnx.checker.check_model(model)
    return model


# --- converters --------------------------------------------------------------------------


class _Graph:
    """Adds nodes and constants to a skl2onnx container with unique names."""

    def __init__(self, scope: Any, container: Any) -> None:
        self.scope, self.container = scope, container

    def node(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        output = self.scope.get_unique_variable_name(op_type.lower())
        self.node_to(op_type, inputs, output, **attrs)
        return str(output)

    def node_to(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> None:
        name = self.scope.get_unique_operator_name(op_type)
        self.container.add_node(op_type, inputs, [output], name=name, **attrs)

    def const(self, values: Any, proto_type: int, dims: list[int] | None = None) -> str:
        name = str(self.scope.get_unique_variable_name("const"))
        array = np.asarray(values)
        shape = list(array.shape) if dims is None else dims
        flat = array.reshape(-1).tolist() if array.ndim else [array.item()]
        self.container.add_initializer(name, proto_type, shape, flat)
        return name


def _tokens_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import StringTensorType

    operator.outputs[0].type = StringTensorType([operator.inputs[0].get_first_dimension(), None])


def _scores_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    columns = operator.raw_operator.weights.shape[1]
    operator.outputs[0].type = FloatTensorType([operator.inputs[0].get_first_dimension(), columns])


def _dense_shape(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    columns = len(operator.raw_operator.vocabulary_)
    operator.outputs[0].type = FloatTensorType([operator.inputs[0].get_first_dimension(), columns])


def _convert_cleaner(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto as T

    g = _Graph(scope, container)
    flat = g.node("Reshape", [operator.inputs[0].full_name, g.const([-1], T.INT64)])
    lower = g.node(
        "StringNormalizer",
        [flat],
        op_version=10,
        case_change_action="LOWER",
        is_case_sensitive=0,
        locale="C",
    )
    tokens = g.node(
        "Tokenizer",
        [lower],
        op_domain="com.microsoft",
        op_version=1,
        mark=0,
        mincharnum=1,
        pad_value=PADDING,
        tokenexp=TOKEN_PATTERN,
    )
    is_word = g.node("RegexFullMatch", [tokens], op_version=20, pattern=WORD_PATTERN)
    stop_code = g.node(
        "LabelEncoder",
        [tokens],
        op_domain="ai.onnx.ml",
        op_version=2,
        keys_strings=list(STOP_WORDS),
        values_int64s=[1] * len(STOP_WORDS),
        default_int64=0,
    )
    not_stop = g.node("Not", [g.node("Equal", [stop_code, g.const(1, T.INT64)])])
    keep = g.node("And", [is_word, not_stop])
    # Sort key per row: a kept token's position, a dropped one's position + width (the back).
    width = g.node("Gather", [g.node("Shape", [tokens]), g.const([1], T.INT64)], axis=0)
    width_scalar = g.node("Squeeze", [width])
    positions = g.node("Range", [g.const(0, T.INT64), width_scalar, g.const(1, T.INT64)])
    pushed = g.node("Add", [positions, width_scalar])
    key = g.node("Where", [keep, positions, pushed])
    order = str(scope.get_unique_variable_name("order"))
    container.add_node(
        "TopK",
        [key, width],
        [str(scope.get_unique_variable_name("sorted")), order],
        name=scope.get_unique_operator_name("TopK"),
        axis=1,
        largest=0,
        sorted=1,
    )
    # Only as wide as the row with the most kept tokens: the rest of the tail is dropped ones.
    kept = g.node(
        "ReduceMax",
        [
            g.node(
                "ReduceSum", [g.node("Cast", [keep], to=T.INT64), g.const([1], T.INT64)], keepdims=0
            )
        ],
        keepdims=1,
    )
    order = g.node("Slice", [order, g.const([0], T.INT64), kept, g.const([1], T.INT64)])
    g.node_to("GatherElements", [tokens, order], operator.outputs[0].full_name, axis=1)


def _ngram_columns(
    g: _Graph, tokens: str, vocabulary: dict[str, int], ngram_range: tuple[int, int]
) -> list[str]:
    """Per n-gram length, [N, M] int64: the vocabulary column of every n-gram of every row,
    -1 when it is not in the vocabulary."""
    from onnx import TensorProto as T

    parts = []
    for n in range(ngram_range[0], ngram_range[1] + 1):
        terms = {term: column for term, column in vocabulary.items() if term.count(" ") == n - 1}
        if not terms:
            continue
        grams = _shifted(g, tokens, 0, n)
        for k in range(1, n):
            grams = g.node("StringConcat", [grams, g.const(b" ", T.STRING, [])], op_version=20)
            grams = g.node("StringConcat", [grams, _shifted(g, tokens, k, n)], op_version=20)
        parts.append(
            g.node(
                "LabelEncoder",
                [grams],
                op_domain="ai.onnx.ml",
                op_version=2,
                keys_strings=list(terms),
                values_int64s=list(terms.values()),
                default_int64=-1,
            )
        )
    if not parts:
        raise ValueError("the vectoriser has an empty vocabulary")
    return parts


def _occurrences(g: _Graph, columns: str) -> str:
    """[N, M] float: how often each n-gram's term occurs in its row (pairwise equal columns)."""
    from onnx import TensorProto as T

    same = g.node(
        "Equal",
        [
            g.node("Unsqueeze", [columns, g.const([2], T.INT64)]),
            g.node("Unsqueeze", [columns, g.const([1], T.INT64)]),
        ],
    )
    return g.node(
        "ReduceSum", [g.node("Cast", [same], to=T.FLOAT), g.const([2], T.INT64)], keepdims=0
    )


def _shifted(g: _Graph, tokens: str, k: int, n: int) -> str:
    """Columns k .. width - n + k of ``tokens``: the k-th word of each n-gram."""
    from onnx import TensorProto as T

    if n == 1:
        return tokens
    end = -(n - 1 - k) if k < n - 1 else np.iinfo(np.int64).max
    return g.node(
        "Slice",
        [tokens, g.const([k], T.INT64), g.const([end], T.INT64), g.const([1], T.INT64)],
    )


@dataclass(frozen=True)
class _TokenFeatures:
    """The TF-IDF of each row, per n-gram occurrence (``[N, M]``): ``safe`` its vocabulary
    column (0 when unknown), ``valid`` 1.0 for a known n-gram, ``value`` its term's TF-IDF
    value (0 when unknown) and ``share`` value / occurrences of the term (so summing ``share``
    times any per-column quantity over a row counts every term once)."""

    columns: str
    safe: str
    valid: str
    value: str
    share: str


def _token_features(
    g: _Graph, tokens: str, vectorizer: TfidfVectorizer, *, binary: bool
) -> _TokenFeatures:
    from onnx import TensorProto as T

    parts = _ngram_columns(g, tokens, vectorizer.vocabulary_, vectorizer.ngram_range)
    # A unigram never equals a bigram: count within each length, then join.
    counts = [_occurrences(g, part) for part in parts]
    columns = parts[0] if len(parts) == 1 else g.node("Concat", parts, axis=1)
    count = counts[0] if len(counts) == 1 else g.node("Concat", counts, axis=1)
    valid = g.node("Cast", [g.node("GreaterOrEqual", [columns, g.const(0, T.INT64)])], to=T.FLOAT)
    safe = g.node("Max", [columns, g.const(0, T.INT64)])
    if binary:
        return _TokenFeatures(columns, safe, valid, valid, g.node("Div", [valid, count]))
    tf = count
    if vectorizer.sublinear_tf:
        tf = g.node("Add", [g.node("Log", [count]), g.const(1.0, T.FLOAT, [])])
    value = tf
    if vectorizer.use_idf:
        idf = g.const(vectorizer.idf_.astype(np.float32), T.FLOAT)
        value = g.node("Mul", [tf, g.node("Gather", [idf, safe], axis=0)])
    value = g.node("Mul", [value, valid])
    share = g.node("Div", [value, count])
    if vectorizer.norm is not None:
        # l1: the sum of the row's term values; l2: the root of the sum of their squares.
        terms = share if vectorizer.norm == "l1" else g.node("Mul", [share, value])
        total = g.node("ReduceSum", [terms, g.const([1], T.INT64)], keepdims=1)
        norm = total if vectorizer.norm == "l1" else g.node("Sqrt", [total])
        norm = g.node("Max", [norm, g.const(_TINY, T.FLOAT, [])])
        share, value = g.node("Div", [share, norm]), g.node("Div", [value, norm])
    return _TokenFeatures(columns, safe, valid, value, share)


def _convert_scores(scope: Any, operator: Any, container: Any) -> None:
    """``x @ weights`` summed over each row's n-grams: no [N, vocabulary] matrix."""
    from onnx import TensorProto as T

    g = _Graph(scope, container)
    op: TextScores = operator.raw_operator
    features = _token_features(g, operator.inputs[0].full_name, op.vectorizer, binary=op.binary)
    weights = g.const(op.weights.astype(np.float32), T.FLOAT)
    selected = g.node("Gather", [weights, features.safe], axis=0)  # [N, M, k]
    row = g.node("Unsqueeze", [features.share, g.const([1], T.INT64)])  # [N, 1, M]
    summed = g.node("MatMul", [row, selected])  # [N, 1, k]
    g.node_to("Squeeze", [summed, g.const([1], T.INT64)], operator.outputs[0].full_name)


def _convert_dense_tfidf(scope: Any, operator: Any, container: Any) -> None:
    """TfidfVectorizer over the cleaner's tokens as scikit-learn computes it: the values are
    computed per n-gram, then scattered into the [N, vocabulary] matrix the trees read."""
    from onnx import TensorProto as T

    g = _Graph(scope, container)
    vectorizer: TfidfVectorizer = operator.raw_operator
    features = _token_features(g, operator.inputs[0].full_name, vectorizer, binary=False)
    width = len(vectorizer.vocabulary_)
    # Unknown n-grams go to an extra last column, cut off afterwards.
    target = g.node(
        "Where",
        [
            g.node("Cast", [features.valid], to=T.BOOL),
            features.columns,
            g.const(width, T.INT64),
        ],
    )
    rows = g.node("Gather", [g.node("Shape", [features.columns]), g.const([0], T.INT64)], axis=0)
    shape = g.node("Concat", [rows, g.const([width + 1], T.INT64)], axis=0)
    zeros = g.node(
        "ConstantOfShape",
        [shape],
        value=_float_tensor(0.0),
    )
    # A term's occurrences all write its one value: duplicates agree.
    scattered = g.node("ScatterElements", [zeros, target, features.value], axis=1)
    g.node_to(
        "Slice",
        [scattered, g.const([0], T.INT64), g.const([width], T.INT64), g.const([1], T.INT64)],
        operator.outputs[0].full_name,
    )


def _float_tensor(value: float) -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor("value", TensorProto.FLOAT, [1], [value])


# --- running -----------------------------------------------------------------------------


def set_metadata(model: Any, metadata: dict[str, str]) -> None:
    """``metadata_props`` of the ONNX file (readable by any ONNX tool)."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def session(model: Any, *, threads: int = 0) -> Any:
    """An onnxruntime session on the CPU (``threads`` intra-op threads; 0: onnxruntime's
    default, one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def predict(inference_session: Any, texts: Any) -> np.ndarray:
    """Labels from an onnxruntime session for raw texts (missing values as empty texts)."""
    column = np.array(
        [text if isinstance(text, str) else "" for text in texts], dtype=object
    ).reshape(-1, 1)
    labels: np.ndarray = inference_session.run([LABEL_OUTPUT], {INPUT_NAME: column})[0]
    return labels
