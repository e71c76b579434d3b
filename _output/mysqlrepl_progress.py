"""
Salt outputter for the progress lines mysqlrepl's runners print while they
work (``salt-run mysqlrepl.seed``: bytes copied, rate, time left;
``salt-run mysqlrepl.switch``: each step): the message alone, one line, not
Salt's nested ``event:`` / ``suffix:`` block. ``--out=json`` still gives each
event as data.

CLI Example:

.. code-block:: bash

    salt-run mysqlrepl.seed replica=db3 force=True
"""


def __virtual__():
    return "mysqlrepl_progress"


def output(data, **kwargs):  # pylint: disable=unused-argument
    event = data.get("event") if isinstance(data, dict) else None
    if isinstance(event, dict) and "message" in event:
        return str(event["message"])
    return str(data)
