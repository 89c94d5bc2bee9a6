"""ANTONI Desk: a PyQt6 slide viewer with a chat panel, talking to the daemon through antoni_bridge.client.

Only `command` may be imported without PyQt6 installed; every other module here imports it at the top.
"""
