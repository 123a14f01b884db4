"""Assembly: the Bot, the Dispatcher and the polling runner. Importing this package is cheap."""
