"""Alerts: rules from a YAML file, evaluated on every sample, transitions stored once and sent to webhooks.

    rules.py     parse and check the rules file (one bad rule costs only that rule)
    values.py    the value a rule names, from a sample, its extras, an output or the runtime's status
    evaluate.py  the state machine (inactive -> pending -> firing -> resolved) with `for` durations
    store.py     states, cursors and transitions committed together, fenced by a lease
    notify.py    the Alertmanager webhook payload, delivered with retries from background threads
    service.py   the evaluator loop; `python -m runtime.alerts` runs it with /healthz and /metrics
"""
