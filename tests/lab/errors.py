"""The test lab's one error tree: every failure of the lab itself (not of serfbridge).

The lab starts real serf agents (``serfagents``, ``serfdocker``), the real apiserver
(``apiserver``), network namespaces (``netns``) and systemd machines (``nspawn``); when
one of them cannot do what a test asked, it raises one of these. They are deliberately
not ``serfbridge.errors`` classes: code under test that catches ``SerfBridgeError``
must never swallow a broken lab, and the package's tree holds no test code.
"""

from __future__ import annotations


class LabError(Exception):
    """The lab could not do what was asked (a component died, timed out or refused)."""


class MissingComponent(LabError):
    """A binary the lab needs is not installed; the message says how to install it."""


class PortTaken(LabError):
    """An agent exited because one of its ports was taken between picking and binding."""


class MachineError(LabError):
    """A systemd-nspawn machine could not be booted, reached or driven."""
