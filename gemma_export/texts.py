"""Built-in text: the validation prompt set and calibration text (written for this project)."""

PROMPTS = [
    "The capital of France is Paris. It is known for the Eiffel Tower, museums such as the Louvre,"
    " and its cafés along the Seine.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "Der schnelle braune Fuchs springt über den faulen Hund. Übung macht den Meister!",
    "Prices rose 3.7% in 2023; 1,024 units cost $12,345.67 (about €11,400).",
    "<start_of_turn>user\nWrite a haiku about the sea.<end_of_turn>\n<start_of_turn>model\n",
    "In mathematics, a prime number is a natural number greater than 1 that is not a product of two"
    " smaller natural numbers. 🙂 Emoji and    spaces\tand tabs.",
    "Photosynthesis is the process by which green plants, algae and some bacteria turn light into"
    " chemical energy. Inside the chloroplasts, chlorophyll absorbs mostly blue and red light, and the"
    " energy splits water molecules, releasing oxygen as a by-product. The captured energy is stored"
    " in sugars built from carbon dioxide taken from the air. Almost every food chain on Earth starts"
    " with this reaction, and the oxygen we breathe is its long-term result.",
    "SELECT customer_id, SUM(amount) AS total\nFROM orders\nWHERE created_at >= '2024-01-01'\n"
    "GROUP BY customer_id\nHAVING SUM(amount) > 1000\nORDER BY total DESC;\n",
    "Once upon a time, in a village at the edge of a great forest, there lived an old clockmaker who"
    " never let anyone into his workshop. Every evening the children gathered at his window to watch"
    " the gears turn, and every evening he drew the curtain just as the largest clock began to chime."
    " One winter night the chime did not come, and the children knocked on his door.",
    "Le soleil se lève à l'est et se couche à l'ouest. En été, les journées sont longues et chaudes;"
    " en hiver, elles sont courtes et froides. ¿Dónde está la biblioteca? 東京は日本の首都です。",
]
