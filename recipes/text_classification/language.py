"""A small offline check that texts are English: which language's stop words a text uses.

Function words (articles, pronouns, prepositions) are the most frequent words of every
language and differ between them, so counting them tells languages apart well enough to catch
a wrongly exported file or a new market's messages (the same idea as NLTK's stop-word language
guesser, without its corpus download). A text is **not English** when the stop words of German,
French, Spanish, Italian, Dutch or Portuguese outnumber the English ones in it; a text with
none of them (``"card declined twice"``) has no evidence either way and counts as English.
English stop words are scikit-learn's list; the others are each language's ~40 most frequent
function words, minus words that are also English stop words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

_OTHER_LANGUAGES: dict[str, str] = {
    "german": (
        "der die das und ist nicht ich du er sie wir ihr es ein eine einen dem den des mit "
        "auf für von zu im ist sind war habe hat haben wird werden auch noch nach bei aus "
        "wie oder aber wenn mein meine kein keine bitte danke schon"
    ),
    "french": (
        "le la les un une des du et est pas je tu il elle nous vous ils elles ce cette ces "
        "mon ma mes ne que qui dans pour sur avec mais ou au aux son sa ses très été avoir "
        "suis sont fait plus merci"
    ),
    "spanish": (
        "el la los las un una unos unas y es no yo tu él ella nosotros ellos que en por "
        "para con pero del al lo se su sus mi mis muy está están fue ser hay como gracias "
        "favor desde hace"
    ),
    "italian": (
        "il lo la gli le un uno una e è non io tu lui lei noi voi loro che di da in con su "
        "per tra ma del della dei delle al alla sono sei mio mia questo questa molto grazie"
    ),
    "dutch": (
        "de het een en is niet ik jij hij zij wij jullie dat die van te in met op voor "
        "maar ook als dan er zijn was heb heeft mijn geen wel nog graag bedankt"
    ),
    "portuguese": (
        "o a os as um uma e é não eu tu ele ela nós eles que em por para com mas do da dos "
        "das ao no na meu minha muito está são foi obrigado você"
    ),
}
OTHER_STOP_WORDS: dict[str, frozenset[str]] = {
    language: frozenset(words.split()) - ENGLISH_STOP_WORDS
    for language, words in _OTHER_LANGUAGES.items()
}
_WORD = re.compile(r"[^\W\d_]+")


def is_not_english(text: str) -> bool:
    """True when another language's stop words outnumber the English ones in ``text``."""
    words = [word.lower() for word in _WORD.findall(text)]
    english = sum(word in ENGLISH_STOP_WORDS for word in words)
    other = max(
        sum(word in stop_words for word in words) for stop_words in OTHER_STOP_WORDS.values()
    )
    return other > english


def non_english_count(texts: Iterable[str]) -> int:
    return sum(is_not_english(text) for text in texts)
