"""The ``retrainer`` command line: the product's front door.

It talks to the coordinator over HTTP (``main.py``) and starts the local process stack
(``stack.py``); no service imports it.
"""
