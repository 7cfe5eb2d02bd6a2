"""Segmind: the async client for Veo 3 Fast (`client`), its request budget and adaptive
polling (`polling`), and a faithful fake of the service for demo mode and tests (`fake`)."""
