"""The marketer console (DESIGN §9), served by the service itself at ``/console``:
``service.console.router.mount`` adds it to the app."""
