"""Webhook delivery: ownership leases, delivery loops, signing, the address policy.

Layer rule: may import the domain modules, :mod:`eventbus.storage`,
:mod:`eventbus.model` and :mod:`eventbus.errors`; never :mod:`eventbus.http`.
"""
