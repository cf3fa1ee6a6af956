"""Widgets of the chat app: sidebar, message view, prompt input, status bar."""
