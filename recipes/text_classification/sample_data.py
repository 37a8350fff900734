"""Synthetic customer-support messages for demos and tests: four topics, realistic noise.

Each message is one to three English sentences built from templates: a topic sentence
(``billing``, ``delivery``, ``technical`` or ``account``), often a sentence that could belong to
any topic, and sometimes a polite or angry closing. The noise a real inbox has: URLs, order
numbers, amounts and dates, repeated punctuation, random capitals and ALL-CAPS messages, stray
whitespace, a few empty rows, and about 3 % of labels that name a neighbouring topic (so no
model reaches 100 %). Written as ``train.csv`` and ``test.csv`` (columns ``id``, ``text``,
``label``). Deterministic for a seed.

Variants for tests and drift demos: ``class_weights`` changes the class balance,
``empty_fraction`` the share of empty texts, ``non_english_fraction`` mixes in German,
French and Spanish messages.

Command line::

    python -m recipes.text_classification OUT_DIR [--seed N] [--rows N]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = ("billing", "delivery", "technical", "account")
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "billing": 0.3,
    "delivery": 0.25,
    "technical": 0.25,
    "account": 0.2,
}
TRAIN_ROWS = 3000
TEST_ROWS = 750
EMPTY_FRACTION = 0.005
LABEL_NOISE = 0.03

_TOPIC: dict[str, tuple[str, ...]] = {
    "billing": (
        "I was [charged|billed|debited] twice for my {plan} subscription this month",
        "The invoice {order} shows the wrong amount of {amount}",
        "Why did my card get [billed|charged] {amount} when I cancelled last week",
        "Please refund the payment of {amount} for order {order}",
        "My [credit card|card|payment] was declined although the bank says it went through",
        "Can you send me a receipt for the {plan} plan with the tax details",
        "I see an unknown charge of {amount} on my [statement|bank account] from {date}",
        "The discount code was not applied and I paid the full price",
        "How do I change the billing address on my invoices",
        "I would like to switch to yearly billing to save money",
        "You took {amount} from my account without asking",
        "The price went up without any notice",
    ),
    "delivery": (
        "My [package|parcel|order] {order} has not arrived and tracking has not moved since {date}",
        "The courier left the [parcel|package|box] at the wrong address again",
        "When will my order {order} be [shipped|sent|dispatched]",
        "The box arrived damaged and two items were missing",
        "Tracking says delivered but there is nothing at my door",
        "Can I change the delivery date to {date}",
        "The shipment is stuck in customs for {days} days now",
        "I [ordered|paid for] express shipping but the parcel took {days} days",
        "Please send the replacement to my new address",
        "The driver never rang the bell and took the package back to the depot",
        "Half of my order is missing",
        "I got someone else's [order|package]",
    ),
    "technical": (
        "The app [crashes|freezes|closes] every time I open the settings page",
        "I get error {code} when I try to upload a file",
        "The website is very slow and the page keeps loading forever",
        "After the update to version {version} the sync stopped working",
        "The export button does nothing in the browser",
        "My phone shows a blank screen after [login|signing in]",
        "The integration with the calendar fails with a timeout",
        "Notifications stopped working on my laptop since {date}",
        "The search returns no results even for exact names",
        "Videos [freeze|stop] after a few seconds of playback",
        "The payment page shows error {code} and will not load",
        "The tracking page of the app is broken",
    ),
    "account": (
        "I cannot log in because the password reset email never arrives",
        "Please delete my account and all my personal data",
        "How do I change the email address of my profile",
        "My account was [locked|blocked|suspended] after too many login attempts",
        "I want to add a second user to my family account",
        "Someone else may have accessed my account from a new device",
        "The two factor code is not accepted when I sign in",
        "Please merge my two accounts into one",
        "I forgot my username and cannot recover it",
        "How can I download a copy of my account data",
        "I never created this account but I get your emails",
        "Change the name on my account please",
    ),
}
# A sentence about another topic, as real messages wander ("I also ...").
_ASIDE: dict[str, tuple[str, ...]] = {
    "billing": ("I also paid for it already.", "Last time the refund took weeks."),
    "delivery": ("The last parcel was late too.", "My order itself arrived fine."),
    "technical": ("The app was slow as well.", "I tried in another browser too."),
    "account": ("I am logged in on my phone.", "My password is correct."),
}
_SHARED = (
    "I have been a customer for {days} years.",
    "This is the second time I write about this.",
    "See the screenshot at {url}",
    "I already checked the help page {url} but it did not help.",
    "My customer number is {order}.",
    "Thanks in advance.",
    "Please let me know what to do.",
    "I called on {date} but nobody answered.",
    "Order reference {order}",
)
_POSITIVE = (
    "Thank you so much, your service is usually great!",
    "I love the product, please help me fix this.",
    "Great support last time, hoping for the same :)",
)
_NEGATIVE = (
    "This is terrible and I am very angry!!!",
    "Worst experience ever, I am really disappointed.",
    "I am frustrated and will cancel if this is not fixed.",
)
_NON_ENGLISH = (
    "Ich habe meine Rechnung nicht erhalten und brauche bitte Hilfe mit der Zahlung",
    "Das Paket ist noch nicht angekommen, wann wird es geliefert?",
    "Die App stürzt immer ab, wenn ich die Einstellungen öffne",
    "Je n'ai pas reçu mon colis et le suivi ne bouge plus depuis une semaine",
    "Je ne peux pas me connecter à mon compte, le mot de passe ne marche pas",
    "La facture est fausse, le montant n'est pas le bon",
    "No he recibido mi pedido y el seguimiento no se mueve desde hace días",
    "La aplicación se cierra cada vez que abro la configuración de la cuenta",
    "Quiero cambiar la dirección de facturación de mi cuenta por favor",
)
_VARIANT = re.compile(r"\[([^\]]+)\]")
_PLANS = ("basic", "premium", "family", "business")
_NEIGHBOUR = {"billing": "account", "account": "billing", "delivery": "billing"}


def generate(
    rows: int,
    seed: int = 0,
    *,
    class_weights: Mapping[str, float] | None = None,
    empty_fraction: float = EMPTY_FRACTION,
    non_english_fraction: float = 0.0,
) -> pd.DataFrame:
    """``rows`` messages with columns ``id``, ``text``, ``label``."""
    rng = np.random.default_rng(seed)
    weights = dict(class_weights or DEFAULT_WEIGHTS)
    labels = list(weights)
    shares = np.array([weights[label] for label in labels], dtype=float)
    drawn = rng.choice(len(labels), size=rows, p=shares / shares.sum())
    texts, final_labels = [], []
    for i in range(rows):
        label = labels[int(drawn[i])]
        texts.append(_message(rng, label))
        if label in _NEIGHBOUR and rng.random() < LABEL_NOISE:
            label = _NEIGHBOUR[label]
        final_labels.append(label)
    frame = pd.DataFrame({"id": np.arange(1, rows + 1), "text": texts, "label": final_labels})
    foreign = rng.random(rows) < non_english_fraction
    frame.loc[foreign, "text"] = rng.choice(_NON_ENGLISH, size=int(foreign.sum()))
    empty = rng.random(rows) < empty_fraction
    frame.loc[empty, "text"] = rng.choice(["", " ", "   "], size=int(empty.sum()))
    return frame


def _message(rng: np.random.Generator, label: str) -> str:
    parts = [_fill(rng, str(rng.choice(_TOPIC[label])))]
    if rng.random() < 0.5:
        parts.append(_fill(rng, str(rng.choice(_SHARED))))
    if rng.random() < 0.3:
        other = str(rng.choice([topic for topic in _ASIDE if topic != label]))
        parts.append(str(rng.choice(_ASIDE[other])))
    mood = rng.random()
    if mood < 0.2:
        parts.append(str(rng.choice(_POSITIVE)))
    elif mood < 0.45:
        parts.append(str(rng.choice(_NEGATIVE)))
    order = rng.permutation(len(parts)) if rng.random() < 0.2 else range(len(parts))
    text = " ".join(_punctuate(rng, parts[j]) for j in order)
    return _case_noise(rng, text)


def _fill(rng: np.random.Generator, template: str) -> str:
    template = _VARIANT.sub(lambda match: str(rng.choice(match.group(1).split("|"))), template)
    return template.format(
        plan=rng.choice(_PLANS),
        order=f"#{rng.integers(10_000, 999_999)}",
        amount=f"${rng.integers(5, 500)}.{rng.integers(0, 100):02d}",
        date=f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/2024",
        days=int(rng.integers(2, 15)),
        code=f"E{rng.integers(100, 999)}",
        version=f"{rng.integers(1, 9)}.{rng.integers(0, 20)}",
        url=rng.choice(
            (
                f"https://help.example.com/article/{rng.integers(100, 999)}",
                f"http://example.org/s/{rng.integers(1000, 9999)}?ref=mail",
                f"www.example.net/img/{rng.integers(10, 99)}.png",
            )
        ),
    )


def _punctuate(rng: np.random.Generator, sentence: str) -> str:
    if sentence[-1] in ".!?)":
        return sentence
    return sentence + str(rng.choice([".", ".", "!", "?", "!!", "...", ""]))


def _case_noise(rng: np.random.Generator, text: str) -> str:
    roll = rng.random()
    if roll < 0.05:
        return text.upper()
    if roll < 0.1:
        return text.lower()
    if roll < 0.2:
        words = text.split(" ")
        shout = int(rng.integers(0, len(words)))
        words[shout] = words[shout].upper()
        return "  ".join(words) if rng.random() < 0.3 else " ".join(words)
    return text


def write_sample_data(
    out_dir: Path,
    seed: int = 0,
    *,
    train_rows: int = TRAIN_ROWS,
    test_rows: int = TEST_ROWS,
    class_weights: Mapping[str, float] | None = None,
    empty_fraction: float = EMPTY_FRACTION,
    non_english_fraction: float = 0.0,
) -> None:
    """Writes ``train.csv`` and ``test.csv`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def sample(rows: int, sample_seed: int) -> pd.DataFrame:
        return generate(
            rows,
            sample_seed,
            class_weights=class_weights,
            empty_fraction=empty_fraction,
            non_english_fraction=non_english_fraction,
        )

    sample(train_rows, seed).to_csv(out_dir / "train.csv", index=False)
    test = sample(test_rows, seed + 10_000)
    test["id"] += train_rows
    test.to_csv(out_dir / "test.csv", index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path, help="folder to write train.csv and test.csv into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=TRAIN_ROWS, help="training rows")
    args = parser.parse_args(argv)
    write_sample_data(args.out_dir, args.seed, train_rows=args.rows, test_rows=args.rows // 4)
    print(f"wrote sample text classification data to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
