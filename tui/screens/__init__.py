"""Screens of the chat app: chat, engine start/failure, settings, help, dialogs."""
