"""moto's EventBridge made to cost what EventBridge costs, in the moto server the local stack runs.

moto 5.2 builds a new JSONPath parser (a yacc table, from the grammar's
docstrings) for every input path of every target of every event it delivers,
even for the default input: at the simulator's 6 ticks a second that was a
seventh of moto's CPU (`py-spy record --gil`). A path's parsed expression
depends only on its text and `find` does not change it, so each text is parsed
once.

moto's default target input also leaves out the envelope's `account`, which
EventBridge always delivers (and the fan-out's EventBridge model requires): the
default template gets it back.
"""

from __future__ import annotations

import functools


def patch() -> None:
    import jsonpath_ng.ext
    from moto.events.utils import EventTemplateParser

    if getattr(jsonpath_ng.ext, "_quanttrade_patched", False):
        return
    template = EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE
    if '"account"' not in template:
        # <account> is already in moto's default input paths map, only the template lacks it.
        EventTemplateParser.DEFAULT_EVENT_INPUT_TEMPLATE = template.replace(
            '"source": "<source>",', '"source": "<source>", "account": "<account>",'
        )
    # moto imports `parse` from jsonpath_ng.ext inside the function that delivers each event.
    jsonpath_ng.ext.parse = functools.lru_cache(maxsize=1024)(jsonpath_ng.ext.parse)
    jsonpath_ng.ext._quanttrade_patched = True  # type: ignore[attr-defined]
