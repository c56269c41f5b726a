"""``sdar-webshop``: the WebShop site (Flask), browsable by people and driven over HTTP by the env."""
